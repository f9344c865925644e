"""Nothing lost: Ctrl-C stops at the next report and resumes; resume never loads state it cannot
authenticate; a moved directory resumes against its own study. Real drivers in real processes (slow)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from himari_ray.search.integrity import (
    QUARANTINE_DIR,
    REWRITTEN,
    SIGNATURE_FILE,
    WRITTEN_ONCE,
    DirectorySigner,
    verify_directory,
)
from himari_ray.types import UserInputError

REPO = Path(__file__).resolve().parents[1]
SPACES = REPO / "tests" / "spaces"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "token"}
CLI = [sys.executable, "-m", "himari_ray"]


def reports(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def long_space(tmp_path: Path, name: str) -> Path:
    """The e2e space with 6 iterations and nothing stopping trials early."""
    text = (SPACES / "e2e.yaml").read_text().replace("iterations: 2,", "iterations: 6,")
    text = text.replace("grace_period: 2", "grace_period: 6").replace("warmup: 2", "warmup: 6")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text.replace("name: e2e", f"name: {name}"))
    return path


def wait_for_reports(out: Path, n: int, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if sum(len(reports(d)) for d in (out / "tune").glob("trial_*")) >= n:
            return
        time.sleep(0.2)
    pytest.fail(f"the search never reached {n} reports")


def test_signature_refuses_unsigned_and_changed_files(tmp_path):
    out = tmp_path / "s"
    (out / "tune" / "trial_0001").mkdir(parents=True)
    state = out / "tune" / "searcher-state.pkl"
    state.write_bytes(pickle.dumps({"a": 1}))
    (out / "tune" / "trial_0001" / "result.json").write_text("{}\n")
    DirectorySigner(out).sign()
    verify_directory(out)  # as written: accepted
    (out / "tune" / "trial_0001" / "result.json").write_text('{"more": 1}\n')  # plain data: not signed
    verify_directory(out)
    state.write_bytes(pickle.dumps({"a": 2}))
    with pytest.raises(UserInputError, match=r"searcher-state\.pkl: changed since the search signed it"):
        verify_directory(out)
    DirectorySigner(out).sign()
    (out / "tune" / "tuner.pkl").write_bytes(b"x")
    with pytest.raises(UserInputError, match=r"tuner\.pkl: not signed"):
        verify_directory(out)
    (out / "tune" / "tuner.pkl").unlink()
    # A driver killed between Tune's write of its state and the signature: rolled back, not loaded as is.
    exp = out / "tune" / "experiment_state-1.json"
    exp.write_text('{"v": 1}')
    DirectorySigner(out).sign()
    exp.write_text('{"v": 2}')
    late = out / "tune" / "trial_0001" / "checkpoint_000001" / "state.pkl"
    late.parent.mkdir()
    late.write_bytes(b"unsigned")
    notes = verify_directory(out)
    assert exp.read_text() == '{"v": 1}' and not late.exists()
    assert (out / QUARANTINE_DIR / late.relative_to(out)).read_bytes() == b"unsigned"  # moved, not lost
    assert len(notes) == 2
    verify_directory(out)  # now clean
    (out / SIGNATURE_FILE).unlink()
    with pytest.raises(UserInputError, match="missing; refusing"):
        verify_directory(out)


def test_a_kill_after_a_new_snapshot_but_before_its_signature_still_rolls_back(tmp_path, monkeypatch):
    """Signing copies each rewritten state file to a snapshot, then writes the signature. A driver killed in
    between must still find a snapshot the signature names (the previous version stays until then)."""
    from himari_ray.search import integrity

    out = tmp_path / "s"
    (out / "tune").mkdir(parents=True)
    exp = out / "tune" / "experiment_state-1.json"
    exp.write_text('{"v": 1}')
    signer = DirectorySigner(out)
    signer.sign(top_level_only=True)
    exp.write_text('{"v": 2}')

    def killed(*args, **kwargs):  # the driver dies right after the new snapshot, before the new signature
        raise KeyboardInterrupt

    monkeypatch.setattr(integrity.os, "replace", lambda src, dst, _real=os.replace: (
        _real(src, dst) if Path(dst).parent.name == integrity.SNAPSHOT_DIR else killed()))  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        signer.sign(top_level_only=True)
    monkeypatch.undo()
    exp.write_text('{"v": 3}')  # and Tune wrote once more
    notes = verify_directory(out)
    assert exp.read_text() == '{"v": 1}' and len(notes) == 1 and "rolled back" in notes[0]
    signer.sign(top_level_only=True)
    assert len(list((out / integrity.SNAPSHOT_DIR).iterdir())) == 1  # older versions pruned once signed


def test_every_state_file_tune_rewrites_rolls_back_after_a_kill(real_search, tmp_path):
    """A driver killed between Tune's write of a state file and its signature must resume from the signed
    version. Every file a real search leaves directly under tune/ is either written once (a change is
    tampering) or known to be rewritten (rolled back); a new kind of Tune file fails here, not in a resume."""
    out = tmp_path / "out"
    shutil.copytree(real_search[0], out)
    top = sorted(p for p in (out / "tune").iterdir() if p.is_file())
    unknown = [p.name for p in top if p.name not in WRITTEN_ONCE and not p.name.startswith(REWRITTEN)]
    assert not unknown, f"Tune state files the signer does not know: {unknown}"
    rewritten = [p for p in top if p.name.startswith(REWRITTEN)]
    assert {p.name.split("-")[0] for p in rewritten} >= {"experiment_state", "searcher", "search_gen_state"}
    signed = {p: p.read_bytes() for p in rewritten}
    for p in rewritten:  # Tune's next step, written just before the kill
        p.write_bytes(b"written after the last signature")
    notes = verify_directory(out)
    assert len(notes) == len(rewritten) and all("rolled back" in n for n in notes)
    assert all(p.read_bytes() == data for p, data in signed.items())
    (out / "tune" / "tuner.pkl").write_bytes(b"x")
    with pytest.raises(UserInputError, match=r"tuner\.pkl: changed since the search signed it"):
        verify_directory(out)


@pytest.mark.slow
def test_ctrl_c_stops_at_the_next_report_and_resume_finishes_the_search(tmp_path):
    out = tmp_path / "out"
    driver = subprocess.Popen(
        [*CLI, "search", str(long_space(tmp_path, "intr")), "--out", str(out), "--trials", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    wait_for_reports(out, 3)
    driver.send_signal(signal.SIGINT)
    stdout, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr[-2000:]
    assert f"resume with: himari-ray search --resume {out}" in stderr
    assert "Traceback" not in stderr
    assert "Pareto front" not in stdout  # no final table as if the search had finished
    study = optuna.load_study(study_name="intr", storage=f"sqlite:///{out / 'study.db'}")
    assert not [t for t in study.trials if t.state == TrialState.FAIL]  # interrupted trials stay resumable
    finished_before = {d.name: (d / "result.json").read_bytes() for d in (out / "tune").glob("trial_*")
                       if reports(d) and reports(d)[-1]["training_iteration"] == 6}  # fmt: skip

    proc = subprocess.run([*CLI, "search", "--resume", str(out)], capture_output=True, text=True, env=ENV,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    dirs = sorted((out / "tune").glob("trial_*"))
    assert len(dirs) == 3 and all(reports(d)[-1]["training_iteration"] == 6 for d in dirs)
    for name, before in finished_before.items():
        assert (out / "tune" / name / "result.json").read_bytes() == before
    study = optuna.load_study(study_name="intr", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 3


@pytest.mark.slow
def test_resume_refuses_a_tampered_pickle_and_a_missing_study_and_a_copy_resumes_on_its_own(tmp_path):
    out = tmp_path / "out"
    driver = subprocess.Popen(
        [*CLI, "search", str(long_space(tmp_path, "tamper")), "--out", str(out), "--trials", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_reports(out, 2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    original_db = (out / "study.db").read_bytes()

    # A pickle that would run a command replaces Tune's state: refused, the command never runs.
    marker = tmp_path / "pwned"
    tuner_pkl = out / "tune" / "tuner.pkl"
    saved = tuner_pkl.read_bytes()

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    tuner_pkl.write_bytes(pickle.dumps(Evil()))
    proc = subprocess.run([*CLI, "search", "--resume", str(out)], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 2 and "tuner.pkl: changed since the search signed it" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not marker.exists()
    tuner_pkl.write_bytes(saved)

    # An empty study database is refused, not silently recreated.
    (out / "study.db").write_bytes(b"")
    proc = subprocess.run([*CLI, "search", "--resume", str(out)], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 2 and "study is missing or empty" in proc.stderr
    assert (out / "study.db").read_bytes() == b""
    (out / "study.db").write_bytes(original_db)

    # The copy resumes against its own study.db; the original's is untouched.
    proc = subprocess.run([*CLI, "search", "--resume", str(copy)], capture_output=True, text=True, env=ENV,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "study.db").read_bytes() == original_db
    study = optuna.load_study(study_name="tamper", storage=f"sqlite:///{copy / 'study.db'}")
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 2


@pytest.mark.slow
def test_a_full_disk_mid_search_is_one_line_and_leaves_no_trial_running(tmp_path):
    """A 5 MiB tmpfs as the output disk: the search's own 4 MiB reserve fills it at the first checkpoints."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5M", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        out = disk / "s"
        proc = subprocess.run([*CLI, "search", str(SPACES / "e2e.yaml"), "--out", str(out)], capture_output=True,
                              text=True, env=ENV, timeout=300)  # fmt: skip
        assert proc.returncode == 2, proc.stderr[-3000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "no space left on device" in lines[0], proc.stderr[-3000:]
        study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{out / 'study.db'}")
        assert study.trials and not [t for t in study.trials if t.state == TrialState.RUNNING]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)  # lazy: a process still closing files must not keep it


def test_the_signing_key_never_travels_into_the_search_directory(tmp_path):
    """Tune pickles its callbacks into tune/tuner.pkl: the signer's key must not be in them."""
    from ray import cloudpickle

    from himari_ray.search.integrity import key_file, signing_callback
    from himari_ray.search.interrupt import GracefulInterrupt

    blob = cloudpickle.dumps([signing_callback(tmp_path), GracefulInterrupt(str(tmp_path)).callback()])
    key_hex = key_file().read_text().strip()
    assert key_hex.encode() not in blob and bytes.fromhex(key_hex) not in blob
    assert cloudpickle.loads(blob)  # and they still unpickle (a restored run replaces them)
