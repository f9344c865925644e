"""What a search prints while it runs (search/callbacks.py): an ETA honest from the first report (`ETA —`
until a trial's second report, then throughput across the trials running at once; never low when ASHA cuts
trials), the report printer fed by Tune's callbacks (a resumed search's finished trials credited), and a
sampling trial's line and collapse stop read from the hold share it is scored by. Scripted events, no Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def scripted_search(trials=12, iterations=12, concurrent=2, startup=6.0, per_iter=1.0, cut=None, jitter=0.0):
    """The events Tune's callbacks would see (time, kind, trial, iteration): Ray takes 15 s to start, then
    `concurrent` slots each run one trial after another: `startup` seconds to the first report, which
    includes one iteration (as the smoke search's ~5 s actor and env), `per_iter` seconds per later one."""
    rng, cut, slots, events = np.random.default_rng(0), cut or {}, [15.0] * concurrent, []
    for n in range(1, trials + 1):
        slot = int(np.argmin(slots))
        t = slots[slot]
        events.append((t, "start", n, 0))
        for k in range(1, cut.get(n, iterations) + 1):
            t += (startup if k == 1 else per_iter) * (1 + jitter * rng.uniform(-1, 1))
            events.append((t, "report", n, k))
        events.append((t, "complete", n, k))
        slots[slot] = t
    order = {"report": 0, "complete": 1, "start": 2}  # a slot frees before the next trial takes it
    return sorted(events, key=lambda e: (e[0], order[e[1]]))


def replay(events, trials=12, iterations=12):
    """(true seconds left, Progress's ETA, its line) at every report, as the printer would show them, and
    the ETA once every trial has ended."""
    from himari_ray.search.callbacks import Progress

    p, end, seen = Progress(trials, iterations, start=0.0), events[-1][0], []
    for t, kind, n, k in events:
        if kind == "start":
            p.start_trial(n, now=t)
        elif kind == "complete":
            p.complete(n)
        else:
            p.report(n, k, now=t)
            seen.append((end - t, p.eta(now=t), p.line(now=t)))
    return seen, p.eta(now=end)


@pytest.mark.parametrize("concurrent", [1, 2, 3, 5])
def test_eta_is_honest_from_the_first_report(concurrent):
    """Issue 18: the old estimate (elapsed x iterations left / iterations done) said 56 min on the first line
    of a 3-minute search: it extrapolated Ray's and the trial's startup. Now: `ETA —` until a trial's second
    report, then throughput across the trials running at once (exact on this steady model)."""
    seen, _ = replay(scripted_search(concurrent=concurrent))
    first_estimate = next(i for i, (_, eta, _) in enumerate(seen) if not np.isnan(eta))
    assert 1 <= first_estimate <= concurrent  # the first reports of the first wave say ETA —
    assert all(line.endswith("ETA —") for _, _, line in seen[:first_estimate])
    for truth, eta, line in seen[first_estimate:]:
        assert eta == pytest.approx(truth, abs=1e-6), line
    assert seen[0][2] == "elapsed 21s  ETA —" and seen[-1][2].endswith("ETA 0s")


def test_eta_with_noisy_iterations_and_trials_cut_early():
    seen, _ = replay(scripted_search(jitter=0.3))
    assert all(abs(eta - truth) <= 0.25 * truth + 3 for truth, eta, _ in seen if not np.isnan(eta))
    # ASHA cuts every other trial after 4 iterations: never assumed, so the ETA may run high, never low
    # and credits each cut trial's unused iterations as it goes.
    cut, at_end = replay(scripted_search(cut={n: 4 for n in range(2, 13, 2)}))
    over = [eta - truth for truth, eta, _ in cut if not np.isnan(eta)]
    assert min(over) >= -1e-6 and at_end == 0.0
    assert (np.diff(over) <= 1e-6).all() and over[0] > over[-1]  # each cut trial lowers it, none raises it
    from himari_ray.search.callbacks import Progress, format_duration, format_report

    p = Progress(total_trials=4, iterations=2, start=0.0)
    p.report(1, 1, now=10.0)
    p.report(1, 2, now=12.0)  # 2 s per iteration, no start seen: startup assumed one iteration
    p.complete(1)
    assert p.line(now=12.0) == "elapsed 12s  ETA 12s"  # three trials of 2 x 2 s, one at a time
    assert format_duration(3725) == "1h02m" and format_duration(float("nan")) == "?"
    line = format_report(3, {"training_iteration": 1, "band_distance": 5.0, "val_sharpe": 1.0}, of=8, progress="x")
    assert line.startswith("trial   3/8  it   1") and line.endswith("  x") and "LOW_VOL=  nan" in line


def test_report_printer_feeds_the_estimator_tunes_callbacks():
    """Tune's callbacks reach Progress: starts time the first report, and trials a resumed search finished
    earlier (TERMINATED in Tune's list, never reported to this driver) are credited, not waited for."""
    import io
    from types import SimpleNamespace

    from himari_ray.search.callbacks import report_printer

    out, now = io.StringIO(), [0.0]
    printer = report_printer(stream=out, total_trials=2, iterations=3, clock=lambda: now[0])
    done = SimpleNamespace(experiment_tag="1_a", status="TERMINATED")
    live = SimpleNamespace(experiment_tag="2_b", status="RUNNING")
    printer.on_trial_start(0, [done, live], live)
    result = {"band_distance": 5.0, "val_sharpe": 1.0}
    for now[0], it in ((6.0, 2), (16.0, 3)):  # resumed from its checkpoint at iteration 1
        printer.on_trial_result(0, [done, live], live, {**result, "training_iteration": it})
    first, second = out.getvalue().splitlines()
    assert first.startswith("trial   2/2  it   2") and first.endswith("ETA —")
    # Trial 2 is at its last iteration; trial 1 finished before the resume (uncredited: 6 + 2 x 10 s more).
    assert second == "trial   2/2  it   3  HOLD% LOW_VOL=  nan TRENDING=  nan HIGH_VOL=  nan CRISIS=  nan" + (
        "  band    5.0  sharpe   1.00  elapsed 16s  ETA 0s"
    )


def test_a_sampling_trial_is_printed_and_stopped_by_the_hold_share_it_is_scored_by():
    """eval.deploy: sample: the report line shows mean P(HOLD), and the collapse stopper (and `analyze`'s
    status) read the deployed HOLD%, not a greedy share that sits at 100% while the sampler holds half."""
    from himari_ray.search.callbacks import collapse_stopper, format_report
    from himari_ray.search.space import CollapseSettings
    from himari_ray.searchdir import COLLAPSED, STOPPED, SearchManifest, TrialRun, trial_status

    report = {
        "training_iteration": 5,
        "hold_pct_LOW_VOL": 100.0,
        "hold_prob_LOW_VOL": 48.5,
        "hold_pct_ALL": 100.0,
        "hold_prob_ALL": 52.0,
        "deployed_hold_pct": 52.0,
        "config": {"trial": {"eval": {"deploy": "sample"}}},
    }
    line = format_report(1, report)
    assert "P(HOLD)% LOW_VOL= 48.5" in line and "100.0" not in line
    greedy = {**report, "deployed_hold_pct": 100.0, "config": {"trial": {"eval": {"deploy": "greedy"}}}}
    assert "  HOLD% LOW_VOL=100.0" in format_report(1, greedy)
    stopper = collapse_stopper(CollapseSettings(warmup=2, hold_high=99.0, hold_low=1.0))
    assert not stopper("t", report) and stopper("t", greedy)
    old = {k: v for k, v in greedy.items() if k != "deployed_hold_pct"}  # a report from before eval.deploy
    assert stopper("t", old)
    manifest = SearchManifest.model_validate(
        {"iterations": 10, "collapse": {"warmup": 2, "hold_high": 99.0, "hold_low": 1.0}}
    )
    for last, status in ((report, STOPPED), (greedy, COLLAPSED)):
        run = TrialRun(number=1, trial_id="t", path=Path("."), reports=[last])
        assert trial_status(run, manifest, "TERMINATED", search_over=True) == status
