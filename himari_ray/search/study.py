"""The persistent Optuna study behind a search: storage, compatibility, and honest trial states.

Ray's `OptunaSearch` tells Optuna COMPLETE for every trial that ends without an error, including those
ASHA or the collapse stopper cut short; `PruningOptunaSearch` tells PRUNED for those (Optuna's TPE then
uses their last intermediate value), FAIL where a metric is missing or NaN (a crash), and can close out
trials a crashed driver left RUNNING. A preflight-skipped trial is COMPLETE with a value in every objective
(its penalty as band distance, `SKIPPED_SHARPE` as Sharpe) so TPE learns the way back from it.
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from himari_ray.rl.scoring import SKIPPED_SHARPE
from himari_ray.schema import (
    BAND_DISTANCE,
    FIELDS,
    PREFLIGHT_SKIPPED,
    STUDY,
    TRAINING_ITERATION,
    VAL_NET_RETURN,
    VAL_SHARPE,
    number,
    read_report,
    shown,
    value,
)
from himari_ray.searchdir import TrialRun, best_checkpoint, read_reports
from himari_ray.types import UserInputError, open_storage, redact

#: Trial user attributes (what `optuna-dashboard` shows beside each trial): the report's headline numbers
#: (per-regime HOLD%, band distance, Sharpe, net return), where the trial lives, and Tune's trial number.
TRIAL_ATTR_METRICS = shown(STUDY)
TUNE_TRIAL_ATTR, TRIAL_DIR_ATTR, CHECKPOINT_ATTR = "tune_trial", "trial_dir", "checkpoint"
#: The violation of a constraint that could not be measured (a crashed or untrained report): finite, since
#: the study stores attributes as JSON.
UNMEASURED = 1e9


def constraint_values(report: dict[str, Any], band_tolerance: float, min_net_return: float | None) -> dict[str, float]:
    """Optuna's constraint values of a report (feasible when each is <= 0): `band`, band distance minus its
    tolerance, and `profit`, the profit constraint's shortfall, where the space sets one."""
    band = number(report, BAND_DISTANCE)
    values = {"band": band - band_tolerance if math.isfinite(band) else UNMEASURED}
    if min_net_return is not None:
        net = number(report, VAL_NET_RETURN)
        values["profit"] = min_net_return - net if math.isfinite(net) else UNMEASURED
    return values


#: Tune's trial id (the suffix of the trial directory), recorded when the trial is suggested.
TUNE_TRIAL_ID_ATTR = "tune_trial_id"


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
    check_values_are_best_reports(study, flag)
    return len(study.trials)


#: Study user attribute saying what a finished trial's value is. Studies written before it was set hold each
#: trial's *last* report (and its latest checkpoint): adding best-report values to them would mix two meanings.
VALUE_ATTR, VALUE_IS = "himari_trial_value", "best_report"


def check_values_are_best_reports(study: optuna.Study, flag: str) -> None:
    """Refuse, in one line, to add trials to a study whose trials were told another kind of value."""
    if study.user_attrs.get(VALUE_ATTR) == VALUE_IS:
        return
    told = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if told:
        raise UserInputError(
            f"{flag}: study {study.study_name!r} was written by an older himari-ray whose trial values are last "
            f"reports, not best ones ({len(told)} trials); adding to it would mix the two: start a new study "
            "(another --storage or space name), or read this one as it is (analyze, confirm, export)"
        )


#: Set by a resuming driver before Tune unpickles its searcher: the study the *resumed* directory holds (a
#: moved or copied search must write into its own study.db, not the one whose path was pickled) and the
#: owner tag its trials carry.
_RESUME_BINDING: dict[str, str] = {}


def bind_resumed_searcher(storage_url: str, owner: str, out_dir: str) -> None:
    """Make every searcher unpickled from now on use `storage_url`, `owner` and `out_dir` (`_RESUME_BINDING`)."""
    _RESUME_BINDING.update(url=storage_url, owner=owner, out_dir=out_dir)


class PruningOptunaSearch(OptunaSearch):
    """OptunaSearch that records early-stopped trials as PRUNED and never leaves its trials RUNNING.

    Pickled (in Tune's `tuner.pkl` and searcher state) as its storage URL and Optuna trial ids, not as live
    storage objects: unpickling an RDB storage reconnects to the path it was created with (and creates tables
    there), so a copied search directory would silently write into the original's study.
    """

    def __init__(
        self,
        *args: Any,
        max_iterations: int,
        owner: str,
        out_dir: str = "",
        constraint: tuple[float, float | None] | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self._max_iterations = max_iterations
        # objective.mode constrained: (band tolerance, profit constraint or None), told to Optuna as constraints.
        self._constraint = constraint
        self._owner = owner  # the search's id (search.json's search_id): stays the same when the directory moves
        self._out_dir = out_dir  # where the search writes its trials, as of this driver

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # Tune writes this state to disk: the URL without its password (a resume binds the real one).
        url = getattr(self._storage, "url", None)
        state["_storage"] = None if url is None else redact(url)
        state["_ot_study"] = None
        state["_ot_trials"] = {tid: t._trial_id for tid, t in self._ot_trials.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        trial_ids = state.pop("_ot_trials")
        self.__dict__.update(state)
        url = _RESUME_BINDING.get("url", state["_storage"])
        self._owner = _RESUME_BINDING.get("owner", state["_owner"])
        self._out_dir = _RESUME_BINDING.get("out_dir", state.get("_out_dir", ""))
        self._storage = open_storage(url, flag="search state")
        self._setup_study(self._mode)  # loads the existing study (load_if_exists)
        self._ot_trials = {tid: optuna.trial.Trial(self._ot_study, i) for tid, i in trial_ids.items()}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        # The file was authenticated (search/integrity.py) before a resume gets here.
        with open(checkpoint_path, "rb") as f:
            self.__setstate__(pickle.load(f))

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:  # tag it, so this search (and only this one) can close it out later
            self._ot_trials[trial_id].set_user_attr(OWNER_ATTR, self._owner)
            self._ot_trials[trial_id].set_user_attr(OUT_DIR_ATTR, self._out_dir)
            # Optuna numbers its trials from 0 across every search of a study; Tune's id names the trial's
            # directory (trial_<n>_<id>): record it so each Optuna trial leads to its files.
            self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ID_ATTR, trial_id)
        return config

    def _trial_dir(self, trial_id: str) -> Path | None:
        """The trial's directory under the search's `tune/`."""
        base = self._out_dir or self._owner  # searchers built before out_dir existed passed the directory as owner
        if not base or not Path(base).is_dir():
            return None
        found = sorted((Path(base) / "tune").glob(f"trial_*_{trial_id}"))
        return found[0] if found else None

    def _record(self, trial_id: str, result: dict[str, Any] | None) -> dict[str, Any] | None:
        """Before the trial is told: its best report's headline numbers (the schema's STUDY keys), directory
        and best checkpoint as user attributes, and (single objective) the last report as an intermediate
        value, as for every report before it — Tune hands the last report to `on_trial_complete` only."""
        ot_trial = self._ot_trials[trial_id]
        path = self._trial_dir(trial_id)
        headline = result
        if path is not None and result:
            headline = TrialRun(0, trial_id, path, self._reports_with(path, result)).best or result
            ot_trial.set_user_attr(TRIAL_DIR_ATTR, str(path))
            ot_trial.set_user_attr(TUNE_TRIAL_ATTR, int(path.name.split("_")[1]))
            checkpoint = best_checkpoint(path)
            if checkpoint is not None:  # the policy its value scores: the best report's, as export ships
                ot_trial.set_user_attr(CHECKPOINT_ATTR, str(checkpoint))
        if not result:
            return None
        constraint = getattr(self, "_constraint", None)  # a searcher pickled before constraints had none
        if constraint is not None:  # Optuna's own constraints: TPE models them, best_trial reads feasible ones only
            for name, v in constraint_values(headline, *constraint).items():
                ot_trial.set_constraint(name, v)
        for key in TRIAL_ATTR_METRICS:
            if FIELDS[key].kind is str:
                ot_trial.set_user_attr(key, str(value(headline, key)) or None)
                continue
            v = number(headline, key)
            ot_trial.set_user_attr(key, None if math.isnan(v) else v)
        values = self._values(result)
        step = result.get(TRAINING_ITERATION)
        reported = self._ot_study._storage.get_trial(ot_trial._trial_id).intermediate_values
        if values is not None and len(values) == 1 and step is not None and step not in reported:
            ot_trial.report(values[0], step)
        return headline

    @staticmethod
    def _reports_with(path: Path, result: dict[str, Any]) -> list[dict[str, Any]]:
        """The trial's reports on disk and the last one (Tune may not have written it to result.json yet)."""
        try:
            reports = read_reports(path / "result.json")[0]
        except OSError:
            reports = []
        last = result.get(TRAINING_ITERATION)
        return [*[r for r in reports if r.get(TRAINING_ITERATION) != last], read_report(result)]

    def _values(self, result: dict[str, Any] | None) -> list[float] | None:
        """The objective value(s) of one report; None where one is missing or NaN (a crash)."""
        if not result:
            return None
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = [result.get(m) for m in metrics]  # a crashed trial's last result may lack them
        if value(result, PREFLIGHT_SKIPPED):  # untrained: its Sharpe is NaN, but TPE must still learn from it
            values = [SKIPPED_SHARPE if m == VAL_SHARPE else v for m, v in zip(metrics, values, strict=True)]
        if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
            return None
        return [float(v) for v in values]

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        best = self._record(trial_id, result)
        # A trial is told the values of its best report (the one every himari-ray command shows and ships).
        values = self._values(best) if self._values(result) is not None else None
        if error or values is None:
            self._ot_study.tell(ot_trial, state=TrialState.FAIL)
        elif (
            not value(result, PREFLIGHT_SKIPPED) and result[TRAINING_ITERATION] < self._max_iterations
        ):  # cut short by ASHA or the collapse stopper: TPE reads a pruned trial's last intermediate value,
            # which `_record` has just reported
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        else:
            self._ot_study.tell(ot_trial, values if len(values) > 1 else values[0], state=TrialState.COMPLETE)
        self._completed_trials.add(trial_id)


OWNER_ATTR = "himari_search"
#: The output directory of the search that ran the trial (a launcher knows a box's directory, not its id).
OUT_DIR_ATTR = "himari_search_dir"


def require_study(url: str, study_name: str, flag: str) -> optuna.storages.RDBStorage:
    """The storage at `url`, refused in one line unless it already holds `study_name`: a resumed search must
    find its history (a 0-byte or missing study.db would otherwise be recreated empty, and exit 0)."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            raise UserInputError(f"{path}: the search's study is missing or empty; refusing to start it afresh")
    storage = open_storage(url, flag=flag)
    try:
        check_values_are_best_reports(optuna.load_study(study_name=study_name, storage=storage), flag)
    except KeyError:
        raise UserInputError(
            f"{flag} {redact(url)}: holds no study named {study_name!r}; refusing to start it afresh"
        ) from None
    return storage


def fail_running(storage: optuna.storages.BaseStorage, study_name: str, owner: str) -> int:
    """Mark FAIL the trials this search (`owner`: its search id, or its output directory) left RUNNING, e.g. when its driver
    was killed and the resumed search restarted them under new numbers. Other drivers' trials are untouched."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0
    n = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if owner in (trial.user_attrs.get(OWNER_ATTR), trial.user_attrs.get(OUT_DIR_ATTR)):
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            n += 1
    return n


def describe_study(
    storage: optuna.storages.BaseStorage, study_name: str, metric_names: list[str], attrs: dict[str, Any]
) -> None:
    """Name the study's objective(s) and record how it was made (command with any password removed, space
    file, himari-ray version) as study user attributes, for `optuna-dashboard` and anyone reading the study.
    A study shared by several drivers keeps the attributes of the last one to start."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # set_metric_names is marked experimental
        study.set_metric_names(metric_names)
    for key, v in attrs.items():
        study.set_user_attr(key, redact(v) if isinstance(v, str) else v)
    study.set_user_attr(VALUE_ATTR, VALUE_IS)


def command_line(argv: list[str]) -> str:
    """The command that started this search, as one string without passwords."""
    return " ".join(redact(a) for a in argv)
