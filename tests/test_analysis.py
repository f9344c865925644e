"""Analysis on files: the trials table, statuses, formats, Pareto front, importance and the Python API, on a
real tiny search (the session's `real_search`), and what a broken or empty search directory gives."""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from himari_ray.cli import main
from himari_ray.report import load_search
from himari_ray.report.analysis import pareto_front
from himari_ray.report.text import render
from himari_ray.schema import BAND_DISTANCE, ITERATION, OBJECTIVE, VAL_SHARPE, hold_pct
from himari_ray.searchdir import FINISHED, RUNNING, SKIPPED
from himari_ray.types import REGIME_NAMES

REPO = Path(__file__).resolve().parents[1]


def raw_reports(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


def test_pareto_front_oracle():
    table = pd.DataFrame(
        {
            "trial": [1, 2, 3, 4, 5, 6, 7],
            "status": ["finished", "finished", "stopped", "finished", "skipped", "finished", "crashed"],
            "band_distance": [10.0, 20.0, 5.0, 10.0, 1.0, 30.0, math.nan],
            "val_sharpe": [1.0, 2.0, -1.0, 0.5, 9.0, 2.0, math.nan],
        }
    )
    # 4 is dominated by 1; 6 by 2; 5 was never trained; 7 has no metrics.
    assert pareto_front(table)["trial"].tolist() == [3, 1, 2]


def test_profit_constraint_keeps_violators_off_the_front():
    table = pd.DataFrame(
        {
            "trial": [1, 2],
            "status": ["finished", "finished"],
            "band_distance": [5.0, 10.0],
            "val_sharpe": [3.0, 1.0],
            "profit_ok": [False, True],
        }
    )
    assert pareto_front(table)["trial"].tolist() == [2]


@pytest.mark.slow
def test_each_row_is_the_trials_best_report_under_the_trial_directory_number(real_search):
    out, _, _ = real_search
    s = load_search(out)
    dirs = {int(d.name.split("_")[1]): d for d in (out / "tune").glob("trial_*")}
    assert sorted(s.trials["trial"]) == sorted(dirs) == list(range(1, len(dirs) + 1))  # Tune's numbers, from 1
    for _, row in s.trials.iterrows():
        reports = raw_reports(dirs[row["trial"]])
        best = min(reports, key=lambda r: (r[OBJECTIVE], -r["training_iteration"]))  # oracle: lowest, last on ties
        assert row[ITERATION] == best["iteration"] and row["iterations"] == reports[-1]["training_iteration"]
        assert row[BAND_DISTANCE] == pytest.approx(best[BAND_DISTANCE])
        for regime in REGIME_NAMES:
            expected = best[hold_pct(regime)]
            assert (math.isnan(expected) and math.isnan(row[hold_pct(regime)])) or row[hold_pct(regime)] == expected
        assert row["trade_cost"] == pytest.approx(best["config"]["trade_cost"])


@pytest.mark.slow
def test_statuses_and_ranking(real_search):
    out, _, _ = real_search
    t = load_search(out).trials
    statuses = set(t["status"])
    assert SKIPPED in statuses and FINISHED in statuses, t[["trial", "status"]]
    assert statuses <= {"finished", "stopped", "collapsed", "skipped"}  # finished search: nothing running
    ranked = t["status"].tolist()
    assert ranked.index(SKIPPED) > max(i for i, s in enumerate(ranked) if s != SKIPPED)  # skipped last
    trained = t[t["status"] != SKIPPED]
    assert trained[OBJECTIVE].is_monotonic_increasing
    for _, row in t.iterrows():  # stopped early means fewer iterations than the budget, finished means all
        assert (row["iterations"] == 2) == (row["status"] == FINISHED)


@pytest.mark.slow
def test_a_running_search_shows_its_running_trials(real_search):
    _, _, running = real_search
    assert running is not None, "the search ended before any mid-search read"
    assert RUNNING in set(running["status"]), running[["trial", "status"]]


@pytest.mark.slow
def test_every_format_carries_the_same_trials(real_search, capsys):
    out, _, _ = real_search
    s = load_search(out)
    assert main(["analyze", str(out), "--format", "csv"]) == 0
    csv = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert csv["trial"].tolist() == s.trials["trial"].tolist()
    assert csv[BAND_DISTANCE].to_numpy() == pytest.approx(s.trials[BAND_DISTANCE].to_numpy(), nan_ok=True)
    assert main(["analyze", str(out), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)  # strict JSON: NaN written as null
    assert [r["trial"] for r in doc["trials"]] == s.trials["trial"].tolist()
    assert doc["pareto"] == s.pareto["trial"].tolist() and doc["best"] == s.best["trial"].tolist()
    assert main(["analyze", str(out), "--format", "markdown"]) == 0
    md = capsys.readouterr().out.splitlines()
    assert md[0].startswith("| trial | status |") and md[1].startswith("|---|")
    assert len([line for line in md if line.startswith("| ")]) == len(s.trials) + 1
    assert main(["analyze", str(out)]) == 0
    table = capsys.readouterr().out
    assert "Pareto front" in table and "skipped" in table


@pytest.mark.slow
def test_pareto_front_is_not_dominated_and_importance_is_optunas(real_search):
    out, _, _ = real_search
    s = load_search(out)
    trained = s.trials[s.trials["status"] != SKIPPED]
    assert not s.pareto.empty
    for _, p in s.pareto.iterrows():
        for _, o in trained.iterrows():
            assert not (
                o[BAND_DISTANCE] <= p[BAND_DISTANCE]
                and o[VAL_SHARPE] >= p[VAL_SHARPE]
                and (o[BAND_DISTANCE] < p[BAND_DISTANCE] or o[VAL_SHARPE] > p[VAL_SHARPE])
            )
    assert set(s.importance["param"]) == {"trade_cost", "entropy_coeff"}, s.importance_note
    assert s.importance["importance"].sum() == pytest.approx(1.0)
    n_trained_reports = sum(
        len(raw_reports(d)) for d in (out / "tune").glob("trial_*") if not raw_reports(d)[0]["preflight_skipped"]
    )
    assert len(s.curves) == n_trained_reports


@pytest.mark.slow
def test_analyze_never_imports_ray(real_search):
    out, _, _ = real_search
    code = (
        "import sys; from himari_ray.cli import main; code = main(['analyze', sys.argv[1], '--format', 'json']);"
        "assert not any(m == 'ray' or m.startswith('ray.') for m in sys.modules), 'analyze imported Ray';"
        "sys.exit(code)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_a_partly_corrupt_search_reports_the_readable_trials_and_names_the_bad_file(real_search, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(real_search[0], out)
    trained = sorted(d for d in (out / "tune").glob("trial_*") if len(raw_reports(d)) == 2)
    bad = trained[0] / "result.json"
    lines = bad.read_text().splitlines()
    bad.write_text(lines[0][:-20] + "\n" + lines[1] + "\n")  # the first report cut mid-line, another after it
    code = main(["analyze", str(out)])
    captured = capsys.readouterr()
    # The table is printed, and the exit code says it is partial: the bad file is named on stderr, one line.
    assert code == 2, captured.err
    assert f"unreadable: {bad}: line 1" in captured.out
    assert captured.err.strip().splitlines() == [f"error: {bad}: line 1 is not a JSON report (skipped); trial "
                                                 f"{int(trained[0].name.split('_')[1])} shows its 1 other report(s)"]  # fmt: skip
    n = int(trained[0].name.split("_")[1])
    assert n in load_search(out).trials["trial"].tolist()  # listed, without reports
    assert len(load_search(out).trials) == len(list((out / "tune").glob("trial_*")))


@pytest.mark.slow
def test_a_fully_corrupt_search_names_every_file_exit_2(real_search, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(real_search[0], out)
    results = sorted((out / "tune").glob("trial_*/result.json"))
    for result in results:
        result.write_text("{not json\n{}\n")
    code = main(["analyze", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    # Every unreadable file named, one line each (not only the first).
    assert code == 2 and len(err) == len(results) > 1, err
    assert all(line.startswith("error: ") and "result.json: lines 1, 2 are not JSON reports" in line for line in err)
    assert sorted(line.split()[1].rstrip(":") for line in err) == [str(r) for r in results]


def test_not_a_search_and_an_empty_search_are_one_line_exit_2(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path)]) == 2
    assert "not a himari-ray search directory" in capsys.readouterr().err
    (tmp_path / "search.json").write_text("{broken")
    assert main(["analyze", str(tmp_path)]) == 2
    assert "search.json: not valid JSON" in capsys.readouterr().err
    (tmp_path / "search.json").write_text(json.dumps({"iterations": 2, "searched": [], "collapse": {}, "trials": 2}))
    assert main(["analyze", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "empty search" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_render_table_is_what_the_search_printed(real_search):
    out, stdout, _ = real_search
    printed = stdout.split("\nresults: ")[0]
    assert render(load_search(out)) in printed


@pytest.mark.slow
def test_the_study_names_its_metric_and_says_how_it_was_made_and_what_each_trial_scored(real_search):
    import optuna
    from optuna.trial import TrialState

    from himari_ray import __version__

    out, _, _ = real_search
    study = optuna.load_study(study_name="report", storage=f"sqlite:///{out / 'study.db'}")
    assert study.metric_names == ["objective"]
    attrs = study.user_attrs
    assert attrs["himari_ray_version"] == __version__ and attrs["space_file"].endswith("tests/spaces/report.yaml")
    assert "search" in attrs["command"] and str(out) in attrs["command"]
    dirs = {int(d.name.split("_")[1]): d for d in (out / "tune").glob("trial_*")}
    for t in study.trials:
        assert t.state != TrialState.RUNNING
        ua = t.user_attrs
        trial_dir = dirs[ua["tune_trial"]]  # Optuna's number is not shown anywhere: tune_trial maps it
        assert ua["trial_dir"] == str(trial_dir)
        reports = raw_reports(trial_dir)
        last = reports[-1]
        assert ua["band_distance"] == pytest.approx(last["band_distance"])
        for regime in REGIME_NAMES:
            v = last[hold_pct(regime)]
            assert (ua[hold_pct(regime)] is None) if math.isnan(v) else ua[hold_pct(regime)] == pytest.approx(v)
        if not last["preflight_skipped"]:
            assert Path(ua["checkpoint"]).is_dir() and Path(ua["checkpoint"]).parent == trial_dir
            # every report is an intermediate value, the last one too (COMPLETE trials included)
            assert t.intermediate_values == pytest.approx({r["training_iteration"]: r["objective"] for r in reports})


@pytest.mark.slow
def test_a_crashed_trial_is_shown_as_crashed_with_its_error(real_search, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(real_search[0], out)
    victim = sorted(d for d in (out / "tune").glob("trial_*") if len(raw_reports(d)) == 2)[0]
    result = victim / "result.json"
    result.write_text(result.read_text().splitlines()[0] + "\n")  # it died after its first report
    (victim / "error.txt").write_text("Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory\n")
    t = load_search(out).trials.set_index("trial")
    row = t.loc[int(victim.name.split("_")[1])]
    assert row["status"] == "crashed" and row["error"] == "RuntimeError: CUDA out of memory"
    assert "crashed" in render(load_search(out)) and "CUDA out of memory" in render(load_search(out))
