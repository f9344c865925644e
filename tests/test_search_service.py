"""The search as a service: honest study states, external storages, federated drivers, resume after a
SIGKILL, repeatability. Real drivers in real processes; all marked slow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]
SPACES = REPO / "tests" / "spaces"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "token"}
CLI = [sys.executable, "-m", "himari_ray"]

pytestmark = pytest.mark.slow


def search(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "search", *args], capture_output=True, text=True, env=ENV, timeout=timeout)


def reports(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def study(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def test_early_stopped_trials_are_pruned_in_the_study_and_none_is_left_running(tmp_path):
    out = tmp_path / "out"
    proc = search(str(SPACES / "prune.yaml"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = study(f"sqlite:///{out / 'study.db'}", "prune")
    states = {t.number: t.state for t in s.trials}
    assert TrialState.RUNNING not in states.values()
    stopped_early = 0
    for trial_dir in sorted((out / "tune").glob("trial_*")):
        last = reports(trial_dir)[-1]
        assert not last["preflight_skipped"]  # the space turns the preflight off: every trial trains
        # Tune's trial n is Optuna's trial n-1 (both count in suggestion order, one driver).
        ot_trial = s.trials[int(trial_dir.name.split("_")[1]) - 1]
        if last["training_iteration"] < 3:
            stopped_early += 1
            assert ot_trial.state == TrialState.PRUNED, trial_dir.name
            # TPE reads a pruned trial's last intermediate value: it must be there, and be the objective.
            assert ot_trial.intermediate_values[last["training_iteration"]] == pytest.approx(last["objective"])
        else:
            assert ot_trial.state == TrialState.COMPLETE, trial_dir.name
    assert stopped_early >= 1


def test_bad_storage_and_incompatible_study_are_refused_and_change_nothing(tmp_path):
    out = tmp_path / "out"
    proc = search(str(SPACES / "e2e.yaml"), "--out", str(out), "--storage", "postgresql://nobody@127.0.0.1:1/none")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--storage postgresql://nobody@127.0.0.1:1/none: cannot open the study storage" in proc.stderr
    assert not out.exists()

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    other = optuna.create_study(study_name="e2e", storage=url)
    other.optimize(lambda t: t.suggest_float("something_else", 0, 1), n_trials=2)
    before = (tmp_path / "shared.db").read_bytes()
    proc = search(str(SPACES / "e2e.yaml"), "--out", str(out), "--storage", url)
    assert proc.returncode == 2 and "study 'e2e' exists with other parameters" in proc.stderr, proc.stderr
    assert (tmp_path / "shared.db").read_bytes() == before and not out.exists()


def test_resume_refuses_a_directory_that_is_not_a_search(tmp_path):
    (tmp_path / "x").mkdir()
    proc = search("--resume", str(tmp_path / "x"))
    assert proc.returncode == 2 and "not a himari-ray search directory" in proc.stderr
    assert list((tmp_path / "x").iterdir()) == []


def test_two_drivers_share_one_study(tmp_path):
    """Federated search: two real drivers on one study URL add trials to the same study with no number
    reused; each samples with everything the study holds when it asks; without --seed their samplers'
    seeds differ, so they never propose the same configurations."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    procs = [
        subprocess.Popen(
            [
                *CLI,
                "search",
                str(SPACES / "e2e.yaml"),
                "--out",
                str(tmp_path / f"d{i}"),
                "--storage",
                url,
                "--trials",
                "2",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for i in (1, 2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    s = study(url, "e2e")
    numbers = [t.number for t in s.trials]
    assert sorted(numbers) == [0, 1, 2, 3]
    owners = {t.user_attrs["himari_search"] for t in s.trials}
    manifests = [json.loads((tmp_path / f"d{i}" / "search.json").read_text()) for i in (1, 2)]
    assert owners == {m["search_id"] for m in manifests}
    assert manifests[0]["seed"] != manifests[1]["seed"]
    assert len({t.params["trade_cost"] for t in s.trials}) == 4  # no configuration proposed twice
    assert all(t.state == TrialState.COMPLETE for t in s.trials)


def test_resume_after_sigkill_of_the_driver(tmp_path):
    out = tmp_path / "out"
    space = tmp_path / "resume.yaml"
    text = (SPACES / "e2e.yaml").read_text()
    text = text.replace("iterations: 2,", "iterations: 6,").replace("max_concurrent: 2", "max_concurrent: 1")
    # No early stopping: every trial must run to its end, so what resume does is all that is measured.
    text = text.replace("grace_period: 2", "grace_period: 6").replace("warmup: 2", "warmup: 6")
    space.write_text(text.replace("name: e2e", "name: resume"))
    driver = subprocess.Popen(
        [*CLI, "search", str(space), "--out", str(out), "--trials", "3"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True,
    )  # fmt: skip
    first, second = out / "tune", None
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            dirs = sorted(first.glob("trial_*")) if first.exists() else []
            if len(dirs) >= 2 and reports(dirs[0]) and reports(dirs[0])[-1]["training_iteration"] == 6:
                second = dirs[1]
                if len(reports(second)) >= 2 and list(second.glob("checkpoint_*")):
                    break
            time.sleep(0.2)
        else:
            pytest.fail("the search never reached a finished trial and a running one")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray processes it started, as in a crash
        driver.wait()
    finished = sorted(first.glob("trial_*"))[0]
    finished_before = (finished / "result.json").read_bytes()
    interrupted_at = reports(second)[-1]["training_iteration"]
    assert interrupted_at < 6

    proc = search("--resume", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    dirs = sorted(first.glob("trial_*"))
    assert len(dirs) == 3  # the number asked for, not more
    assert (finished / "result.json").read_bytes() == finished_before  # kept, not rerun
    resumed = reports(second)
    assert resumed[-1]["training_iteration"] == 6
    iterations = [r["iteration"] for r in resumed]
    assert iterations == sorted(iterations) and iterations[0] == 1
    restart = next(r for r in resumed if r["iterations_since_restore"] == 1 and r["iteration"] > 1)
    assert restart["iteration"] <= interrupted_at + 1  # continued from its checkpoint, not from scratch
    s = study(f"sqlite:///{out / 'study.db'}", "resume")
    assert not [t for t in s.trials if t.state == TrialState.RUNNING]
    assert len([t for t in s.trials if t.state == TrialState.COMPLETE]) == 3


def test_same_seed_same_suggestions_and_same_metrics(tmp_path):
    runs = []
    for name in ("a", "b"):
        proc = search(str(SPACES / "e2e.yaml"), "--out", str(tmp_path / name), "--seed", "4")
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(
            {
                d.name.split("_")[1]: [
                    (r["config"]["trade_cost"], r["config"]["entropy_coeff"], r["band_distance"], r["val_sharpe"],
                     r["episode_return_mean"])
                    for r in reports(d)
                ]
                for d in (tmp_path / name / "tune").glob("trial_*")
            }
        )  # fmt: skip
    assert runs[0] == runs[1]


def test_multi_objective_search_records_its_pareto_front(tmp_path):
    space = tmp_path / "multi.yaml"
    space.write_text(
        (SPACES / "e2e.yaml").read_text().replace("name: e2e", "name: multi") + "objective: {mode: multi}\n"
    )
    out = tmp_path / "out"
    proc = search(str(space), "--out", str(out), "--trials", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = study(f"sqlite:///{out / 'study.db'}", "multi")
    assert [d.name for d in s.directions] == ["MINIMIZE", "MAXIMIZE"]
    assert all(len(t.values) == 2 for t in s.trials if t.state == TrialState.COMPLETE)
    import pandas as pd

    front = pd.read_csv(out / "pareto.csv")
    assert len(front) >= 1
    # each trial is ranked by its best report (lowest objective), as in the table
    table_trials = {
        int(d.name.split("_")[1]): min(reports(d), key=lambda r: r["objective"]) for d in (out / "tune").glob("trial_*")
    }
    for _, row in front.iterrows():  # nothing on the front is dominated by any trained trial
        for other in table_trials.values():
            assert not (
                other["band_distance"] <= row["band_distance"]
                and other["val_sharpe"] >= row["val_sharpe"]
                and (other["band_distance"] < row["band_distance"] or other["val_sharpe"] > row["val_sharpe"])
            )
    assert "Pareto front" in proc.stdout
    # The study says what the tool says: each value pair is the trial's best report's, and the table's best
    # trial is on Optuna's own Pareto front.
    by_number = {t.user_attrs["tune_trial"]: t for t in s.trials if t.state == TrialState.COMPLETE}
    for d in (out / "tune").glob("trial_*"):
        number = int(d.name.split("_")[1])
        best = min(reversed(reports(d)), key=lambda r: r["objective"])  # a tie goes to the later report
        if number in by_number:
            assert by_number[number].values == pytest.approx([best["band_distance"], best["val_sharpe"]])
    from himari_ray.report import load_search

    table_best = int(load_search(out).trials["trial"].iloc[0])
    if table_best in by_number:
        assert table_best in {t.user_attrs["tune_trial"] for t in s.best_trials}


def test_address_joins_a_token_authenticated_cluster_and_a_driver_without_the_token_is_refused(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        out = tmp_path / "out"
        # No RAY_AUTH_MODE in the driver's environment: `--address` itself must turn token auth on.
        bare = {k: v for k, v in ENV.items() if k != "RAY_AUTH_MODE"}
        proc = subprocess.run(
            [*CLI, "search", str(SPACES / "e2e.yaml"), "--out", str(out), "--trials", "1", "--address", cluster.address],
            capture_output=True, text=True, env=bare, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert len(reports(next((out / "tune").glob("trial_*")))) == 2
        no_token = subprocess.run(
            [*CLI, "search", str(SPACES / "e2e.yaml"), "--out", str(tmp_path / "x"), "--address", cluster.address],
            capture_output=True, text=True, env={**ENV, "RAY_AUTH_MODE": "disabled"}, timeout=300,
        )  # fmt: skip
        assert no_token.returncode == 2
        assert no_token.stderr.strip().splitlines()[-1].startswith(f"error: --address {cluster.address}: cannot join")
    finally:
        cluster.shutdown()


@pytest.mark.parametrize("kind", ["pbt", "pb2"])
def test_pbt_mutations_reach_the_learner_and_the_env_runners(tmp_path, kind):
    """PBT restarts a trial from another trial's checkpoint with mutated values, and Ray has lost such
    mutations before. Every report records what actually acts in the learner (lr, entropy coefficient) and in
    every env copy (a reward cost); before and after each exploit it must equal the trial's config."""
    space = tmp_path / "pbt.yaml"
    text = (
        (SPACES / "e2e.yaml").read_text().replace("name: e2e", "name: pbt").replace("iterations: 2,", "iterations: 4,")
    )
    text = text.replace("search:\n", "search:\n  lr: {low: 0.0001, high: 0.01, log: true}\n")
    text = text.replace(
        "scheduler: {grace_period: 2}",
        "scheduler: {kind: KIND, perturbation_interval: 1, synch: true, quantile_fraction: 0.5, mutate: [entropy_coeff, lr, trade_cost]}",
    )
    text = text.replace("KIND", kind).replace("collapse: {warmup: 2}", "collapse: {warmup: 9}")  # keep all of them
    space.write_text(text)
    out = tmp_path / "out"
    proc = search(str(space), "--out", str(out), "--trials", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (out / "study.db").exists()
    mutated = 0
    for trial_dir in (out / "tune").glob("trial_*"):
        rows = reports(trial_dir)
        for r in rows:
            for key in ("entropy_coeff", "lr", "trade_cost"):
                assert r[f"applied_{key}"] == pytest.approx(r["config"][key], rel=1e-9), (
                    trial_dir.name,
                    key,
                    r["iteration"],
                )
        mutated += len({r["config"]["lr"] for r in rows}) > 1
    assert mutated >= 1, "PBT never exploited: the test proved nothing"


def test_a_trial_with_a_remote_env_runner_gets_its_bundle_and_trains(tmp_path):
    space = tmp_path / "runners.yaml"
    text = (SPACES / "e2e.yaml").read_text().replace("name: e2e", "name: runners")
    space.write_text(text.replace("lr: 0.001}", "lr: 0.001, num_env_runners: 1, num_envs_per_env_runner: 2}"))
    out = tmp_path / "out"
    proc = search(str(space), "--out", str(out), "--trials", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = reports(next((out / "tune").glob("trial_*")))
    assert [r["iteration"] for r in rows] == [1, 2] and rows[-1]["env_steps_sampled"] >= 2 * 256
    params = json.loads(next((out / "tune").glob("trial_*")).joinpath("params.json").read_text())
    assert params["trial"]["train"]["num_env_runners"] == 1
