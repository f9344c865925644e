"""Dollars per trial and per search from the launch ledger and the pulled results, without Ray."""

from __future__ import annotations

import json

import pytest

from himari_ray.cli import main
from himari_ray.report.cost import LEDGER_FILE, cost_report, search_cost
from himari_ray.types import UserInputError


def write_ledger(out, events):
    out.mkdir(parents=True, exist_ok=True)
    (out / LEDGER_FILE).write_text("".join(json.dumps(e) + "\n" for e in events))


def test_each_instance_is_charged_its_price_from_created_to_destroyed(tmp_path):
    t0 = 1_700_000_000.0
    write_ledger(
        tmp_path,
        [
            {"time": t0, "event": "created", "instance": 1, "gpu": "RTX 4090", "num_gpus": 1, "dph": 0.40},
            {"time": t0 + 60, "event": "created", "instance": 2, "gpu": "RTX 4090", "num_gpus": 2, "dph": 0.80},
            {"time": t0 + 300, "event": "ready", "instance": 1},
            {"time": t0 + 3600, "event": "destroyed", "instance": 1, "reason": "finished"},
            {"time": t0 + 60 + 1800, "event": "destroyed", "instance": 2, "reason": "lost"},
            {"time": t0 + 3600, "event": "trials", "finished": 12},
        ],
    )
    cost = search_cost(tmp_path)
    assert cost.dollars == pytest.approx(0.40 * 1.0 + 0.80 * 0.5)
    assert cost.trials == 12 and cost.dollars_per_trial == pytest.approx(0.8 / 12)
    assert cost.wall_hours == pytest.approx(1.0) and cost.trials_per_hour == pytest.approx(12.0)
    text = cost_report(tmp_path)
    assert (
        "cost: $0.8000 for this search on 2 instance(s)" in text and "$0.0667 per trial, 12.0 trials per hour" in text
    )


def test_a_running_instance_is_charged_up_to_now_and_flagged(tmp_path):
    write_ledger(
        tmp_path, [{"time": 0.0, "event": "created", "instance": 9, "gpu": "H100 SXM", "num_gpus": 1, "dph": 2.0}]
    )
    cost = search_cost(tmp_path, now=1800.0)
    assert cost.dollars == pytest.approx(1.0) and cost.instances[0].running
    assert "still running and billing" in cost_report(tmp_path)


def test_without_a_ledger_there_is_no_cost_and_a_corrupt_one_is_one_line(tmp_path):
    assert search_cost(tmp_path) is None and cost_report(tmp_path) is None
    (tmp_path / LEDGER_FILE).write_text('{"time": 0, "event": "created"\n{"time": 1}\n')
    with pytest.raises(UserInputError, match=f"{LEDGER_FILE}: line 1 is not JSON"):
        search_cost(tmp_path)


def pulled_box(launch):
    """A launch directory with one box's search pulled into <launch>/boxes/<name>, one trained report in it."""
    box = launch / "boxes" / "himari-ab-0"
    (box / "tune" / "trial_0001_ab").mkdir(parents=True)
    manifest = {"searched": [], "iterations": 1, "collapse": {"warmup": 2, "hold_high": 99.0, "hold_low": 1.0}}
    (box / "search.json").write_text(json.dumps(manifest))
    # One trained report: `analyze` refuses an empty search.
    report = {"training_iteration": 1, "objective": 12.0, "band_distance": 12.0, "val_sharpe": 0.1, "config": {}}
    (box / "tune" / "trial_0001_ab" / "result.json").write_text(json.dumps(report) + "\n")
    return box


def test_analyze_of_a_pulled_box_shows_the_launch_cost(tmp_path, capsys):
    """A box's search pulled into <launch>/boxes/<name> is a search directory; its cost is the launch's."""
    box = pulled_box(tmp_path)
    write_ledger(
        tmp_path,
        [
            {"time": 0.0, "event": "created", "instance": 3, "gpu": "RTX 4090", "num_gpus": 1, "dph": 0.5},
            {"time": 7200.0, "event": "destroyed", "instance": 3},
        ],
    )
    assert main(["analyze", str(box)]) == 0
    assert "cost: $1.00 for this search on 1 instance(s)" in capsys.readouterr().out


CREATED = {"time": 0.0, "event": "created", "instance": 3, "gpu": "RTX 4090", "num_gpus": 1, "dph": 0.5}


@pytest.mark.parametrize(
    "line, says",
    [
        ({**CREATED, "dph": "cheap"}, "'dph' 'cheap' is not a price"),
        ({**CREATED, "dph": -1.0}, "'dph' -1.0 is not a price"),
        ({**CREATED, "instance": -3}, "'instance' -3 is not an instance id"),
        ({**CREATED, "instance": "3"}, "'instance' '3' is not an instance id"),
        ({**CREATED, "num_gpus": 1.5}, "'num_gpus' 1.5 is not a GPU count"),
        ({**CREATED, "time": "noon"}, "'time' is not a number of seconds"),
        ({"time": 1.0, "event": "trials", "finished": "all"}, "'finished' 'all' is not a trial count"),
        ({"time": 1.0}, "no event name"),
        ([1, 2], "expected an event object, got a JSON list"),
        ('{"time": NaN, "event": "ready", "instance": 3}', "line 1 is not JSON"),
        (b"\xff\xfe", "not UTF-8 text"),
    ],
)
def test_analyze_with_a_corrupt_launch_ledger_is_one_line_naming_it_exit_2(tmp_path, capsys, line, says):
    """`analyze` reads the launch's ledger for its cost with the same checks `vast down` uses: a line that is not
    what a launch writes is one line naming the ledger and the line, never a traceback (a KeyError, a float of
    text) nor a wrong bill."""
    box = pulled_box(tmp_path)
    ledger = tmp_path / LEDGER_FILE
    if isinstance(line, bytes):
        ledger.write_bytes(line + b"\n")
    else:
        ledger.write_text((line if isinstance(line, str) else json.dumps(line)) + "\n")
    before = ledger.read_bytes()
    assert main(["analyze", str(box)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(ledger) in err and says in err, err
    assert ledger.read_bytes() == before
