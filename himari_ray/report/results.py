"""The Python API for notebooks: `load_search(DIR)` gives a search's results as pandas DataFrames.

    from himari_ray.report import load_search
    s = load_search("runs/smoke-20260101-120000")
    s.trials      # one row per trial (its best report), ranked
    s.best        # the best trained trials
    s.pareto      # band distance (down) vs validation Sharpe (up)
    s.importance  # Optuna's parameter importance (target, param, importance)
    s.curves      # one row per (trial, iteration)

Works on a running search (running trials say so) and without Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd

from himari_ray.report.analysis import best_trials, curves, pareto_front, status_counts, trials_frame
from himari_ray.report.importance import param_importance
from himari_ray.schema import deploy_of
from himari_ray.searchdir import SearchManifest, SearchRun, bands_of, load_search_run
from himari_ray.types import UserInputError


@dataclass
class SearchResults:
    """A search directory's results; every table is computed once, on first use."""

    run: SearchRun
    n_best: int = 5
    _importance: tuple[pd.DataFrame, str] | None = field(default=None, repr=False)

    @property
    def out(self) -> Path:
        return self.run.out

    @property
    def manifest(self) -> SearchManifest:
        return self.run.manifest

    @property
    def problems(self) -> list[str]:
        """One line per unreadable file or report line (the rest of the search still loads)."""
        return self.run.problems

    @cached_property
    def trials(self) -> pd.DataFrame:
        return trials_frame(self.run)

    @cached_property
    def best(self) -> pd.DataFrame:
        return best_trials(self.trials, self.n_best)

    @cached_property
    def pareto(self) -> pd.DataFrame:
        return pareto_front(self.trials)

    @cached_property
    def curves(self) -> pd.DataFrame:
        return curves(self.run)

    @property
    def importance(self) -> pd.DataFrame:
        return self._importance_and_note()[0]

    @property
    def importance_note(self) -> str:
        """What the importance is computed on, or why there is none (too few complete trials, ...)."""
        return self._importance_and_note()[1]

    def _importance_and_note(self) -> tuple[pd.DataFrame, str]:
        if self._importance is None:
            self._importance = param_importance(self.manifest.space, self.manifest.storage_url(self.run.out))
        return self._importance

    @cached_property
    def bands(self) -> dict[str, tuple[float, float]]:
        """The target HOLD% band of each regime the trials were scored against."""
        return bands_of(self.run)

    @property
    def deployment(self) -> str:
        """How the trials' policies were scored (`eval.deploy`): `greedy`, or `sample` (searches before it: greedy)."""
        return deploy_of(self.manifest.eval)

    @property
    def status_counts(self) -> dict[str, int]:
        return status_counts(self.trials)


def load_search(out: str | Path, n_best: int = 5) -> SearchResults:
    """Read a search directory (running or finished). Bad input (not a search, no readable trial) raises
    `UserInputError` with one line naming the directory or file."""
    run = load_search_run(Path(out))
    if not run.trials:
        raise UserInputError(f"{out}: an empty search: no trial has started yet (nothing under tune/)")
    if not any(t.reports for t in run.trials) and run.problems:
        raise UserInputError(f"{run.problems[0]} (and no other trial is readable)")
    return SearchResults(run=run, n_best=n_best)
