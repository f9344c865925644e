"""The persistent Optuna study behind a search: storage, compatibility, and honest trial states.

Ray's `OptunaSearch` tells Optuna COMPLETE for every trial that ends without an error, including those
ASHA or the collapse stopper cut short; `PruningOptunaSearch` tells PRUNED for those (Optuna's TPE then
uses their last intermediate value), FAIL where a metric is missing or NaN (a crash), and can close out
trials a crashed driver left RUNNING. A preflight-skipped trial is COMPLETE with a value in every objective
(its penalty as band distance, `SKIPPED_SHARPE` as Sharpe) so TPE learns the way back from it.
"""

from __future__ import annotations

import math
import time
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from himari_ray.rl.evaluate import SKIPPED_SHARPE
from himari_ray.types import UserInputError


def open_storage(url: str, flag: str = "--storage", attempts: int = 5) -> optuna.storages.RDBStorage:
    """An RDB storage for `url` (SQLite, PostgreSQL, ... any SQLAlchemy URL), or one line saying why not.

    Two drivers opening a fresh study database at once race to create its schema and one of them fails
    (a UNIQUE constraint on the schema version); by the next attempt the other has created it."""
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True} if "sqlite" not in url else {})
        except Exception as exc:  # SQLAlchemy and drivers raise many types; the message is what the user needs
            if attempt + 1 < attempts:
                time.sleep(0.5 * (attempt + 1))
                continue
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserInputError(f"{flag} {url}: cannot open the study storage ({first})") from None
    raise AssertionError("unreachable")


def check_compatible(
    storage: optuna.storages.BaseStorage,
    study_name: str,
    distributions: dict[str, optuna.distributions.BaseDistribution],
    directions: list[str],
    flag: str = "--storage",
) -> int:
    """Refuse to add trials to an existing study that searched other parameters or objectives.
    Returns how many trials the study already holds. Reads only; changes nothing."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0  # no such study yet: it will be created
    want = [
        optuna.study.StudyDirection.MINIMIZE if d == "min" else optuna.study.StudyDirection.MAXIMIZE for d in directions
    ]
    if list(study.directions) != want:
        raise UserInputError(
            f"{flag}: study {study_name!r} exists with {len(study.directions)} objective(s) "
            f"{[d.name.lower() for d in study.directions]}; this search has {[d.name.lower() for d in want]}"
        )
    for trial in study.get_trials(deepcopy=False):
        # Conditional parameters make a trial's distributions a subset of the space's; each must match.
        if any(distributions.get(k) != d for k, d in trial.distributions.items()):
            theirs = sorted(trial.distributions)
            raise UserInputError(
                f"{flag}: study {study_name!r} exists with other parameters ({', '.join(theirs)} with other ranges"
                f" or names); use another space name or storage"
            )
    return len(study.trials)


class PruningOptunaSearch(OptunaSearch):
    """OptunaSearch that records early-stopped trials as PRUNED and never leaves its trials RUNNING."""

    def __init__(self, *args: Any, max_iterations: int, owner: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._max_iterations = max_iterations
        self._owner = owner

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:  # tag it, so this search (and only this one) can close it out later
            self._ot_trials[trial_id].set_user_attr(OWNER_ATTR, self._owner)
            # Optuna numbers its trials from 0 across every search of a study; Tune's id names the trial's
            # directory (trial_<n>_<id>): record it so each Optuna trial leads to its files.
            self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ATTR, trial_id)
        return config

    def _values(self, result: dict[str, Any] | None) -> list[float] | None:
        if not result:
            return None
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = [result.get(m) for m in metrics]  # a crashed trial's last result may lack them
        if result.get("preflight_skipped"):  # untrained: its Sharpe is NaN, but TPE must still learn from it
            values = [SKIPPED_SHARPE if m == "val_sharpe" else v for m, v in zip(metrics, values, strict=True)]
        if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
            return None
        return [float(v) for v in values]

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        values = self._values(result)
        if error or values is None:
            self._ot_study.tell(ot_trial, state=TrialState.FAIL)
        elif (
            not result["preflight_skipped"] and result["training_iteration"] < self._max_iterations
        ):  # cut short by ASHA or the collapse stopper: TPE reads a pruned trial's last intermediate value
            step = result["training_iteration"]
            if (
                len(values) == 1
                and step not in self._ot_study._storage.get_trial(ot_trial._trial_id).intermediate_values
            ):
                ot_trial.report(values[0], step)  # a trial stopped at its first report has none yet
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        else:
            self._ot_study.tell(ot_trial, values if len(values) > 1 else values[0], state=TrialState.COMPLETE)
        self._completed_trials.add(trial_id)


OWNER_ATTR = "himari_search"
TUNE_TRIAL_ATTR = "tune_trial_id"


def fail_running(storage: optuna.storages.BaseStorage, study_name: str, owner: str) -> int:
    """Mark FAIL the trials this search (`owner`, its output directory) left RUNNING, e.g. when its driver
    was killed and the resumed search restarted them under new numbers. Other drivers' trials are untouched."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0
    n = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get(OWNER_ATTR) == owner:
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            n += 1
    return n
