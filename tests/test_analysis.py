"""Analysis on files: the Pareto front of band distance against validation Sharpe."""

from __future__ import annotations

import pandas as pd

from himari_ray.report.analysis import pareto_front


def test_pareto_front_oracle():
    table = pd.DataFrame(
        {
            "trial": [1, 2, 3, 4, 5, 6],
            "status": ["complete", "complete", "stopped", "complete", "skipped", "complete"],
            "band_distance": [10.0, 20.0, 5.0, 10.0, 1.0, 30.0],
            "val_sharpe": [1.0, 2.0, -1.0, 0.5, 9.0, 2.0],
        }
    )
    # 4 is dominated by 1; 6 by 2; 5 was never trained.
    assert pareto_front(table)["trial"].tolist() == [3, 1, 2]


def test_profit_constraint_keeps_violators_off_the_front():
    table = pd.DataFrame(
        {
            "trial": [1, 2],
            "status": ["complete", "complete"],
            "band_distance": [5.0, 10.0],
            "val_sharpe": [3.0, 1.0],
            "profit_ok": [False, True],
        }
    )
    assert pareto_front(table)["trial"].tolist() == [2]
