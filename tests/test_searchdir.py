"""The search directory's one reader and one ranking: every command names the same best trial, and the Optuna
study says what the tool says (its values are best reports', its checkpoint the best one, its trials carry
himari-ray's numbers)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from himari_ray.schema import (
    BAND_DISTANCE,
    BEST_OBJECTIVE,
    OBJECTIVE,
    PREFLIGHT_SKIPPED,
    PROFIT_OK,
    TRAINING_ITERATION,
    VAL_SHARPE,
    read_report,
)
from himari_ray.searchdir import (
    FINISHED,
    SKIPPED,
    STOPPED,
    SearchManifest,
    SearchRun,
    TrialRun,
    best_trial,
    ranked,
)
from himari_ray.types import UserInputError


def manifest(**kw) -> SearchManifest:
    base = {"space": "s", "trials": 9, "iterations": 4, "searched": [], "collapse": {"warmup": 1}}
    return SearchManifest.model_validate({**base, **kw})


def report(it: int, objective: float, band: float | None = None, sharpe: float = 0.0, **kw) -> dict:
    raw = {TRAINING_ITERATION: it, OBJECTIVE: objective, BAND_DISTANCE: objective if band is None else band}
    return read_report({**raw, VAL_SHARPE: sharpe, PROFIT_OK: True, **kw})


def run(number: int, *reports: dict, status: str = FINISHED, error: str = "") -> TrialRun:
    return TrialRun(number, f"id{number}", Path(f"trial_{number:04d}_id{number}"), list(reports), status, error)


def order(m: SearchManifest, *runs: TrialRun) -> list[int]:
    return [r.number for r in ranked(SearchRun(Path("."), m, list(runs)))]


def test_a_trial_is_judged_by_its_best_report_and_a_tie_goes_to_the_later_one():
    r = run(1, report(1, 5.0), report(2, 3.0, sharpe=1.0), report(3, 3.0, sharpe=2.0), report(4, 9.0))
    assert r.best[TRAINING_ITERATION] == 3


def test_ranking_objective_then_sharpe_then_number():
    m = manifest()
    a = run(1, report(4, 5.0, sharpe=0.5))
    b = run(2, report(4, 2.0, sharpe=0.1))
    c = run(3, report(4, 5.0, sharpe=1.5))
    d = run(4, report(4, 5.0, sharpe=1.5))
    assert order(m, a, b, c, d) == [2, 3, 4, 1]


def test_full_budget_trials_rank_before_cut_short_ones_as_the_study_sees_them():
    """ASHA's laggards are PRUNED in the study and Optuna's best_trial reads COMPLETE trials only."""
    m = manifest()
    full = run(1, report(4, 6.0))
    cut = run(2, report(1, 1.0), status=STOPPED)
    assert order(m, cut, full) == [1, 2]


def test_constraints_rank_violators_after_every_satisfying_trial():
    m = manifest(eval={"min_net_return": 0.0})
    poor = run(1, report(4, 0.5, **{PROFIT_OK: False}))
    ok = run(2, report(4, 7.0))
    assert order(m, poor, ok) == [2, 1]
    # a constrained objective: band distance within its tolerance first, whatever the objective says
    m = manifest(objective={"mode": "constrained", "band_tolerance": 5.0})
    wide = run(1, report(4, -3.0, band=9.0))
    narrow = run(2, report(4, -1.0, band=4.0))
    assert order(m, wide, narrow) == [2, 1]


def test_untrained_trials_rank_last_and_are_never_the_best():
    m = manifest()
    skipped = run(1, report(0, 1001.0, **{PREFLIGHT_SKIPPED: True}), status=SKIPPED)
    crashed = run(2, status="crashed", error="ValueError: boom")
    nan = run(3, report(1, math.nan))
    trained = run(4, report(4, 80.0))
    assert order(m, crashed, skipped, nan, trained) == [4, 1, 2, 3]
    assert best_trial(SearchRun(Path("."), m, [crashed, skipped])) is None


def test_an_older_manifest_migrates_and_a_broken_one_is_one_line(tmp_path):
    old = {"space": "s", "iterations": 2, "searched": [], "collapse": {}, "targets": {"CRISIS": [70, 80]}}
    (tmp_path / "search.json").write_text(json.dumps(old))
    assert SearchManifest.load(tmp_path).bands == {"CRISIS": (70.0, 80.0)}
    (tmp_path / "search.json").write_text(json.dumps({**old, "iterations": "many"}))
    with pytest.raises(UserInputError, match=r"search.json: key 'iterations'"):
        SearchManifest.load(tmp_path)
    assert "targets" not in manifest().model_dump()  # one copy of the bands: eval.bands


# ---- on a real search --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_reader_and_the_study_name_the_same_best_trial(real_search):
    from himari_ray.policy.export import find_trial
    from himari_ray.report import load_search
    from himari_ray.search.confirm import choose_trial
    from himari_ray.searchdir import best_checkpoint

    out, stdout, _ = real_search
    results = load_search(out)
    analyze_best = int(results.trials["trial"].iloc[0])
    assert int(results.best["trial"].iloc[0]) == analyze_best  # what report and the hints print
    assert choose_trial(out, None)[0] == analyze_best
    assert find_trial(out, None).number == analyze_best
    hinted = re.search(r"himari-ray export \S+ --trial (\d+)", stdout)
    assert hinted and int(hinted.group(1)) == analyze_best, stdout[-2000:]

    study = optuna.load_study(study_name="report", storage=f"sqlite:///{out / 'study.db'}")
    assert study.best_trial.user_attrs["tune_trial"] == analyze_best
    by_number = {t.user_attrs["tune_trial"]: t for t in study.trials if "tune_trial" in t.user_attrs}
    for number, trial_dir in ((int(d.name.split("_")[1]), d) for d in (out / "tune").glob("trial_*")):
        t = by_number[number]
        if t.state != TrialState.COMPLETE:
            continue
        reports = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
        # its value is its best report's objective, and its checkpoint that report's
        assert t.value == pytest.approx(reports[-1][BEST_OBJECTIVE])
        assert t.value == pytest.approx(min(r[OBJECTIVE] for r in reports))
        if not reports[-1][PREFLIGHT_SKIPPED]:
            assert t.user_attrs["checkpoint"] == str(best_checkpoint(trial_dir))


def test_a_study_of_last_report_values_is_refused_not_mixed(tmp_path):
    from himari_ray.search.study import VALUE_ATTR, VALUE_IS, check_compatible, require_study

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = optuna.create_study(study_name="s", storage=url)
    old.add_trial(optuna.trial.create_trial(value=3.0))  # an older himari-ray: a last report's value
    with pytest.raises(UserInputError, match=r"--storage: study 's' was written by an older himari-ray"):
        check_compatible(optuna.storages.RDBStorage(url), "s", {}, ["min"])
    with pytest.raises(UserInputError, match=r"--resume: study 's' was written by an older"):
        require_study(url, "s", flag="--resume")
    old.set_user_attr(VALUE_ATTR, VALUE_IS)  # what describe_study writes: best-report values
    assert check_compatible(optuna.storages.RDBStorage(url), "s", {}, ["min"]) == 1
    require_study(url, "s", flag="--resume")


def _table_best(out: Path) -> int:
    from himari_ray.report import load_search

    return int(load_search(out).trials["trial"].iloc[0])


@pytest.mark.slow
def test_a_constrained_selective_search_and_its_study_name_the_same_best_trial(tmp_path):
    """objective.mode constrained: Optuna holds each trial's constraint (best report's band distance minus the
    tolerance), its value is the best report's objective, and study.best_trial (feasible trials only) is the
    table's first row; where no finished trial is feasible, Optuna names none."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    space = tmp_path / "constrained.yaml"
    text = (repo / "tests" / "spaces" / "e2e.yaml").read_text().replace("name: e2e", "name: constrained")
    space.write_text(text + "eval: {deploy: selective}\nobjective: {mode: constrained, band_tolerance: 30}\n")
    out = tmp_path / "out"
    env = {**__import__("os").environ, "PYTHONPATH": str(repo), "RAY_AUTH_MODE": "token"}
    cmd = [sys.executable, "-m", "himari_ray", "search", str(space), "--out", str(out), "--trials", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="constrained", storage=f"sqlite:///{out / 'study.db'}")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete
    for t in complete:
        trial_dir = Path(t.user_attrs["trial_dir"])
        reports = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
        best = min(reversed(reports), key=lambda r: r[OBJECTIVE])  # ties: the later report
        assert t.value == pytest.approx(best[OBJECTIVE])
        assert list(t.constraints.values()) == pytest.approx([best[BAND_DISTANCE] - 30.0])
    feasible = [t for t in complete if all(c <= 0 for c in t.constraints.values())]
    if feasible:
        assert study.best_trial.user_attrs["tune_trial"] == _table_best(out)
    else:
        with pytest.raises(ValueError):
            study.best_trial  # noqa: B018  (Optuna names no best trial; the table's first is infeasible)


def test_tune_statuses_read_the_newest_drivers_state_whatever_the_file_times(tmp_path):
    """A resume leaves the killed driver's state beside its own, and its last copy rewrites both: the stale one
    can be the later by modification time (seen: 0.7 ms). The statuses are the newest driver's, by name."""
    import os

    from himari_ray.searchdir import tune_statuses

    def state(name: str, statuses: dict[str, str]) -> Path:
        path = tmp_path / f"experiment_state-{name}.json"
        entries = [[json.dumps({"trial_id": t, "status": s}), "{}"] for t, s in statuses.items()]
        path.write_text(json.dumps({"trial_data": entries}))
        return path

    killed = state("2026-12-04_00-21-15", {"a": "TERMINATED", "b": "RUNNING"})
    resumed = state("2026-12-04_00-22-05", {"a": "TERMINATED", "b": "TERMINATED", "c": "TERMINATED"})
    os.utime(resumed, ns=(10**18, 10**18))
    os.utime(killed, ns=(10**18 + 700_000, 10**18 + 700_000))
    assert tune_statuses(tmp_path) == ({"a": "TERMINATED", "b": "TERMINATED", "c": "TERMINATED"}, True)
