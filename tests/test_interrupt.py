"""Nothing lost: Ctrl-C stops at the next report and resumes; resume never loads state it cannot
authenticate; a moved directory resumes against its own study. Real drivers in real processes (slow)."""

from __future__ import annotations

import hashlib
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
)
from himari_ray.search.resume_check import plan_resume, verify_directory
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


def tune_state(out: Path, trials: dict[str, list[str]]) -> Path:
    """An experiment state in Tune's layout: each trial (directory name -> the checkpoints it keeps) as a
    JSON string, its checkpoints inside a hex-encoded blob the way Tune pickles its checkpoint manager."""
    blob = "".join(f"/x/tune/{t}/{c}".encode().hex() for t, cks in trials.items() for c in cks)
    data = [
        [json.dumps({"trial_id": t, "relative_logdir": t}), json.dumps({"checkpoint_manager": blob})] for t in trials
    ]
    path = out / "tune" / "experiment_state-x.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"trial_data": data, "runner_data": {}}))
    return path


def test_a_file_caught_mid_write_is_never_signed(tmp_path):
    """Tune's sync copies its state over tune/ in place: a signature taken mid-copy must keep the last whole
    version signed (issue 18: an empty experiment_state was signed and its signed copy was empty too)."""
    out = tmp_path / "s"
    exp = tune_state(out, {})
    searcher = out / "tune" / "searcher-state-x.pkl"
    searcher.write_bytes(pickle.dumps({"n": 1}))
    signer = DirectorySigner(out)
    signer.sign()
    whole = {exp: exp.read_bytes(), searcher: searcher.read_bytes()}
    exp.write_bytes(b"")  # the next copy had just begun: truncated, nothing written yet
    searcher.write_bytes(pickle.dumps({"n": 2})[:-3])
    signer.sign(top_level_only=True)
    notes = verify_directory(out)
    assert len(notes) == 2 and all("rolled back" in n for n in notes)
    assert all(p.read_bytes() == data for p, data in whole.items())


def test_a_trial_file_cut_short_is_restored_and_a_changed_one_refused(tmp_path):
    """params.json and params.pkl are copied over themselves on every sync: a kill mid-copy leaves a prefix
    of the signed content (restored, where the issue's run was refused as tampering); other content is not."""
    out = tmp_path / "s"
    tune_state(out, {"trial_a": []})
    params = out / "tune" / "trial_a" / "params.json"
    params.parent.mkdir(parents=True)
    params.write_text(json.dumps({"trade_cost": 0.1, "entropy_coeff": 0.01}))
    pkl = params.with_name("params.pkl")
    pkl.write_bytes(pickle.dumps({"trade_cost": 0.1}))
    DirectorySigner(out).sign()
    whole = params.read_bytes()
    for cut in (0, 7):
        params.write_bytes(whole[:cut])
        notes = verify_directory(out)
        assert params.read_bytes() == whole and len(notes) == 1 and "cut short" in notes[0]
    pkl.write_bytes(pickle.dumps({"trade_cost": 0.2}))
    with pytest.raises(UserInputError, match=r"params\.pkl: changed since the search signed it"):
        verify_directory(out)


def test_checkpoints_are_signed_once_reported_and_kept_while_a_signed_state_names_them(tmp_path):
    """A trial writes its checkpoint file by file (not signed until Tune reports it); Tune deletes the
    previous checkpoint as it registers a newer one, before the state naming that one is signed."""
    from himari_ray.search.integrity import LINKS_DIR, SNAPSHOT_DIR, read_signature

    out = tmp_path / "s"
    exp = tune_state(out, {"trial_a": ["checkpoint_000001"]})
    first = out / "tune" / "trial_a" / "checkpoint_000001"
    first.mkdir(parents=True)
    (first / "state.pkl").write_bytes(pickle.dumps({"weights": [1.0] * 100}))
    signer = DirectorySigner(out, live=True)
    signer.sign()
    assert "tune/trial_a/checkpoint_000001/state.pkl" not in read_signature(out)  # perhaps still arriving
    signer.register(first)
    signer.sign_trials()
    assert "tune/trial_a/checkpoint_000001/state.pkl" in read_signature(out)
    saved = (first / "state.pkl").read_bytes()
    shutil.rmtree(first)  # Tune registered checkpoint_000002 and deleted this one; then the driver was killed
    second = first.with_name("checkpoint_000002")
    second.mkdir()
    (second / "state.pkl").write_bytes(pickle.dumps({"weights": [2.0] * 100})[:50])
    notes = verify_directory(out)
    assert (first / "state.pkl").read_bytes() == saved and not second.exists()
    assert (out / QUARANTINE_DIR / "tune" / "trial_a" / "checkpoint_000002" / "state.pkl").is_file()
    assert len(notes) == 2 and "restored from its signed links" in " ".join(notes)
    tune_state(out, {"trial_a": []})  # a newer state that no longer names it: its links go
    shutil.rmtree(first)
    DirectorySigner(out, live=True).sign()
    assert not (out / SNAPSHOT_DIR / LINKS_DIR / "trial_a" / "checkpoint_000001").exists()
    assert exp.is_file()


def test_a_trial_the_signed_state_does_not_know_and_a_partial_line_are_set_right(tmp_path):
    """The kill came after Tune created trial_b (its directory copied into tune/) but before a signature
    held the state naming it: a resume would make a second trial with its number. And a results file cut
    mid-line would swallow the first report appended after the resume."""
    out = tmp_path / "s"
    tune_state(out, {"trial_a": []})
    for trial in ("trial_a", "trial_b"):
        (out / "tune" / trial).mkdir()
        (out / "tune" / trial / "params.json").write_text("{}")
    DirectorySigner(out).sign()
    results = out / "tune" / "trial_a" / "result.json"
    results.write_text('{"training_iteration": 1}\n{"training_iter')
    notes = verify_directory(out)
    assert not (out / "tune" / "trial_b").exists() and (out / QUARANTINE_DIR / "tune" / "trial_b").is_dir()
    assert results.read_text() == '{"training_iteration": 1}\n' and len(notes) == 2


def tree(root: Path) -> dict[str, str]:
    """Every file under root with its digest: to show a refusal changed nothing."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}  # fmt: skip


@pytest.mark.slow
def test_a_refused_resume_changes_nothing(real_search, tmp_path):
    """A directory a kill left needing repairs (state to roll back, a params file cut short, a checkpoint
    to set aside) plus one tampered file, or an unreachable study: refused in one line, exit 2, and the
    whole tree is as it was: the check comes before any repair."""
    out = tmp_path / "out"
    shutil.copytree(real_search[0], out)
    tune = out / "tune"
    (max(tune.glob("experiment_state-*.json"))).write_bytes(b'{"written after": "the last signature"}')
    params = next(tune.glob("trial_*/params.json"))
    params.write_bytes(params.read_bytes()[:10])
    late = next(tune.glob("trial_*")) / "checkpoint_999999" / "state.pkl"
    late.parent.mkdir()
    late.write_bytes(b"unsigned")
    good = plan_resume(out)  # what would be repaired
    assert len(good.steps) == 3
    tuner_pkl = tune / "tuner.pkl"
    saved = tuner_pkl.read_bytes()
    tuner_pkl.write_bytes(saved[:-1] + b"!")
    before = tree(out)
    proc = subprocess.run([*CLI, "search", "--resume", str(out)], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 2 and "tuner.pkl: changed since the search signed it" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and tree(out) == before
    tuner_pkl.write_bytes(saved)

    manifest = json.loads((out / "search.json").read_text())  # its study now lives where nothing answers
    manifest.update(storage="postgresql://nobody@127.0.0.1:1/none", study_file=None)
    (out / "search.json").write_text(json.dumps(manifest))
    before = tree(out)
    proc = subprocess.run([*CLI, "search", "--resume", str(out)], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 2 and "cannot open the study storage" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and tree(out) == before


@pytest.mark.slow
def test_a_tune_that_would_restart_instead_of_resuming_is_stopped_before_any_trial(real_search, tmp_path):
    """Tune resumes nothing from a state it cannot read: it logs that and starts the experiment again, every
    trial anew with a config lacking the trial settings (the issue's duplicate trial_0001 and KeyError
    'trial'). A signed state in a layout Tune cannot load stands for any such failure the check misses."""
    out = tmp_path / "out"
    shutil.copytree(real_search[0], out)
    exp = max((out / "tune").glob("experiment_state-*.json"))
    state = json.loads(exp.read_text())
    del state["runner_data"]
    exp.write_text(json.dumps(state))
    DirectorySigner(out).sign()
    dirs = sorted(p.name for p in (out / "tune").glob("trial_*"))
    proc = subprocess.run([*CLI, "search", "--resume", str(out)], capture_output=True, text=True, env=ENV,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 1 and "would have started it again from scratch" in proc.stderr, proc.stderr[-3000:]
    assert sorted(p.name for p in (out / "tune").glob("trial_*")) == dirs  # no trial made, none run


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
