"""`himari-ray confirm`: bad input refused before anything is written; (slow) a real tiny search, confirmed
with 2 seeds on validation and test, then a second confirm refused (the test split is read once)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from himari_ray.cli import main

SPACES = Path(__file__).resolve().parent / "spaces"


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def fake_search(root: Path, trials: dict[int, list[dict] | str]) -> Path:
    """A search directory as `search` lays it out: a trial is its reports, or 'crashed' (error.txt)."""
    root.mkdir()
    (root / "search.json").write_text(json.dumps({"space": "x", "iterations": 2}))
    for n, reports in trials.items():
        d = root / "tune" / f"trial_{n:04d}_abc{n}"
        d.mkdir(parents=True)
        (d / "params.json").write_text(json.dumps({"trial": {}, "trade_cost": 0.1}))
        if reports == "crashed":
            (d / "error.txt").write_text("RuntimeError: boom")
            reports = [{"training_iteration": 1, "preflight_skipped": False, "objective": 5.0, "band_distance": 5.0}]
        (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in reports))
    return root


SKIPPED = {"training_iteration": 1, "preflight_skipped": True, "objective": 1400.0, "band_distance": 400.0}


@pytest.mark.parametrize(
    ("make", "args", "expected"),
    [
        (lambda p: p.mkdir() or p, [], "not a himari-ray search directory"),
        (lambda p: fake_search(p, {1: [SKIPPED], 2: "crashed"}), [], "no trained trial to confirm"),
        (lambda p: fake_search(p, {1: [SKIPPED]}), ["--trial", "7"], "--trial 7: no such trial in"),
        (lambda p: fake_search(p, {1: [SKIPPED]}), ["--trial", "1"], "trial 1 was skipped by the preflight"),
        (lambda p: fake_search(p, {2: "crashed"}), ["--trial", "2"], "trial 2 crashed (see error.txt)"),
        (lambda p: fake_search(p, {1: [SKIPPED]}), ["--seeds", "0"], "--seeds: must be in [1, 100]"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, make, args, expected):
    root = make(tmp_path / "search")
    before = snapshot(root)
    assert main(["confirm", str(root), *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1
    assert snapshot(root) == before


def test_an_already_confirmed_search_is_refused_without_force(tmp_path, capsys):
    root = fake_search(tmp_path / "search", {1: [SKIPPED]})
    (root / "confirm.json").write_text(json.dumps({"test_read_at": "2026-01-01T00:00:00Z"}))
    assert main(["confirm", str(root)]) == 2
    assert "test split was already read (2026-01-01T00:00:00Z)" in capsys.readouterr().err
    assert main(["confirm", str(root), "--force"]) == 2  # --force gets past it, to the next check
    assert "no trained trial" in capsys.readouterr().err


@pytest.mark.slow
def test_real_search_then_confirm_with_two_seeds_then_a_second_confirm_is_refused(local_ray, tmp_path, capsys):
    from himari_ray.search.driver import run_search
    from himari_ray.search.space import load_space

    space, path = load_space(str(SPACES / "e2e.yaml"))
    out = run_search(space, path, tmp_path / "out", trials=1, seed=0)

    # Each trial keeps its best checkpoint (by the objective) beside its latest, and says which it is.
    for trial in (out / "tune").glob("trial_*"):
        last = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()][-1]
        kept = {
            json.loads((c / "himari_trial_state.json").read_text())["iteration"] for c in trial.glob("checkpoint_*")
        }
        assert {last["best_iteration"], last["training_iteration"]} <= kept
        assert last["best_objective"] <= last["objective"]

    assert main(["confirm", str(out), "--seeds", "2"]) == 0
    record = json.loads((out / "confirm.json").read_text())
    assert record["status"] == "complete" and len(record["per_seed"]) == 2 and record["seeds"] == [0, 1]
    for seed in record["per_seed"]:
        assert 1 <= seed["iteration"] <= 2
        for split in ("val", "test"):
            row = seed[split]
            assert row["band_distance"] >= 0 and row[f"{split}_buy_and_hold"] != 0
            assert all(f"hold_prob_{r}" in row for r in ("LOW_VOL", "TRENDING", "HIGH_VOL", "CRISIS"))
    # validation and test are different bars: buy-and-hold over each differs
    assert (
        record["summary"]["val"]["val_buy_and_hold"]["mean"] != record["summary"]["test"]["test_buy_and_hold"]["mean"]
    )
    # the report shows confirm's results once there are some (issue 18: it never did)
    from himari_ray.report.html import confirm_section
    from himari_ray.schema import display

    section = "".join(confirm_section(out))
    test_band = record["summary"]["test"]["band_distance"]
    assert "Confirmation on the test split" in section and "Not confirmed yet" not in section
    assert f"{display('band_distance', test_band['mean'])} ± {display('band_distance', test_band['std'])}" in section
    kept = (out / "confirm.json").read_text()
    (out / "confirm.json").write_text("[1, 2")
    assert "unreadable" in "".join(confirm_section(out))
    (out / "confirm.json").write_text(kept)
    assert "Not confirmed yet" in "".join(confirm_section(tmp_path))
    # It retrains the chosen configuration itself: with the trial's own seed it reproduces the search's report.
    own = record["per_seed"][0]
    assert own["iteration"] == record["search_best"]["iteration"]
    assert own["val"]["band_distance"] == pytest.approx(record["search_best"]["band_distance"])
    md = (out / "confirm.md").read_text()
    assert "## Test" in md and "mean ± std" in md and f"trial {record['trial']}" in md
    assert record["deploy"] == "greedy" and "Scored as deployed: greedy" in md
    assert "test net return" in capsys.readouterr().out

    before = snapshot(out)
    assert main(["confirm", str(out), "--seeds", "2"]) == 2  # the test split was read once already
    assert "already read" in capsys.readouterr().err
    assert snapshot(out) == before
