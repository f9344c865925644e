"""Parameter importance by Optuna's own evaluator (`optuna.importance.get_param_importances`, PED-ANOVA by
default) on the study a search kept; Optuna never imports Ray."""

from __future__ import annotations

import logging
import warnings

import pandas as pd

from himari_ray.schema import BAND_DISTANCE, OBJECTIVE, VAL_SHARPE
from himari_ray.types import open_storage, redact

#: Below this many COMPLETE trials an importance is noise, not a finding: say so instead.
MIN_COMPLETE_TRIALS = 4


def param_importance(name: str, url: str | None) -> tuple[pd.DataFrame, str]:
    """(importance table: target, param, importance; one line saying what it is or why there is none).

    Optuna's evaluators read COMPLETE trials only: trials cut short by ASHA or the collapse stopper (PRUNED)
    do not count. A federated study counts every driver's trials."""
    empty = pd.DataFrame(columns=["target", "param", "importance"])
    if not url or not name:
        return empty, "parameter importance: this search kept no Optuna study (population-based scheduler)"
    try:
        import optuna
        from optuna.trial import TrialState

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        logging.getLogger("sqlalchemy").setLevel(logging.ERROR)
        # The same opener as the search's: SQLAlchemy URLs, and grpc:// through Optuna's storage proxy.
        study = optuna.load_study(study_name=name, storage=open_storage(url, "study", attempts=1, grpc_wait_s=2.0))
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    except Exception as exc:  # a moved or remote storage: the table still stands without importance
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        return empty, f"parameter importance: cannot read the study {name!r} at {redact(url)} ({redact(first)})"
    if len(complete) < MIN_COMPLETE_TRIALS:
        return empty, (
            f"parameter importance: needs at least {MIN_COMPLETE_TRIALS} complete trials in the study, it has "
            f"{len(complete)} (trials stopped early are not counted by Optuna's evaluators)"
        )
    names = study.metric_names or ([OBJECTIVE] if len(study.directions) == 1 else [BAND_DISTANCE, VAL_SHARPE])
    rows = []
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    for i, target in enumerate(names):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-feature warnings; the result is what matters
            try:
                scores = optuna.importance.get_param_importances(
                    study, evaluator=evaluator, target=(lambda t, i=i: t.values[i])
                )
            except (ValueError, RuntimeError) as exc:
                return empty, f"parameter importance: Optuna could not evaluate it ({str(exc).splitlines()[0]})"
        rows += [{"target": target, "param": p, "importance": float(v)} for p, v in scores.items()]
    note = (
        f"parameter importance ({type(evaluator).__name__.removesuffix('ImportanceEvaluator')}, Optuna) on "
        f"{len(complete)} complete trials of study {name!r}"
    )
    return pd.DataFrame(rows, columns=["target", "param", "importance"]), note
