"""Nothing lost: Ctrl-C stops at the next report and resumes; resume never loads state it cannot
authenticate, nor lets Tune restart a search it should resume; a moved directory resumes against its own
study; a full disk is one line. Real drivers in real processes (slow). (The signature a resume checks, on
hand-made directories, is `test_integrity.py`'s.)"""

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

from himari_ray.search.integrity import DirectorySigner
from himari_ray.search.resume_check import plan_resume

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
