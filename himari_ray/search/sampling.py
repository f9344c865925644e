"""How a space becomes suggestions: Tune and Optuna distributions, the define-by-run space and the seeded TPE searcher."""

from __future__ import annotations

from typing import Any

from himari_ray.schema import BAND_DISTANCE, OBJECTIVE, VAL_EDGE, VAL_SHARPE
from himari_ray.search.sections import ParamRange
from himari_ray.search.space import SearchSpace, ordered_search

#: The multi-objective search's metrics and directions (the single objective is the report's OBJECTIVE:
#: band distance, Sharpe tie-break, profit constraint); `objective.metric: edge` sets edge against bands.
MULTI_OBJECTIVE = ([BAND_DISTANCE, VAL_SHARPE], ["min", "max"])
MULTI_METRICS = {"sharpe": VAL_SHARPE, "edge": VAL_EDGE}


def tune_distributions(space: SearchSpace, keys: list[str] | None = None) -> dict[str, Any]:
    from ray import tune

    keys = list(space.search) if keys is None else keys
    out = {}
    for k in keys:
        r = space.search[k]
        if r.choices is not None:
            out[k] = tune.choice(r.choices)
        elif r.integer:
            out[k] = (tune.lograndint if r.log else tune.randint)(int(r.low), int(r.high) + 1)
        else:
            out[k] = (tune.loguniform if r.log else tune.uniform)(r.low, r.high)
    return out


def optuna_distributions(space: SearchSpace) -> dict[str, Any]:
    import optuna

    out: dict[str, Any] = {}
    for k, r in space.search.items():
        if r.choices is not None:
            out[k] = optuna.distributions.CategoricalDistribution(r.choices)
        elif r.integer:
            out[k] = optuna.distributions.IntDistribution(int(r.low), int(r.high), log=r.log)
        else:
            out[k] = optuna.distributions.FloatDistribution(r.low, r.high, log=r.log)
    return out


class DefineByRun:
    """Optuna define-by-run space: asks for each parameter whose `when` holds, unconditional ones first.
    A plain class (not a closure) so Tune can pickle the searcher's state for --resume."""

    def __init__(self, space: SearchSpace):
        self.order = [(k, r.model_dump()) for k, r in ordered_search(space)]

    def __call__(self, trial: Any) -> None:
        chosen: dict[str, Any] = {}
        for name, raw in self.order:
            r = ParamRange.model_validate(raw)
            if not r.active(chosen):
                continue
            # Public suggest_* calls: Tune's captor records the config from exactly these.
            if r.choices is not None:
                chosen[name] = trial.suggest_categorical(name, r.choices)
            elif r.integer:
                chosen[name] = trial.suggest_int(name, int(r.low), int(r.high), log=r.log)
            else:
                chosen[name] = trial.suggest_float(name, r.low, r.high, log=r.log)


def objective_spec(space: SearchSpace) -> tuple[str | list[str], str | list[str]]:
    """Metric(s) and direction(s) Optuna optimises for this space. A constrained search minimises the report's
    objective (-Sharpe or -edge where feasible, rl/scoring.py) with the band tolerance as Optuna's constraint."""
    if space.objective.mode == "multi":
        return [BAND_DISTANCE, MULTI_METRICS[space.objective.metric]], list(MULTI_OBJECTIVE[1])
    return OBJECTIVE, "min"


def make_searcher(
    space: SearchSpace,
    seed: int,
    storage: Any | None = None,
    max_concurrent: int | None = None,
    owner: str = "",
    out_dir: str = "",
):
    """Seeded TPE (or random search, `budget.sampler`) through Ray Tune's OptunaSearch (optionally persisted), limited in concurrency, telling
    Optuna PRUNED for trials stopped early."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    from himari_ray.search.study import PruningOptunaSearch

    metric, mode = objective_spec(space)
    constrained = space.objective.mode == "constrained"
    searcher = PruningOptunaSearch(
        space=DefineByRun(space),
        metric=metric,
        mode=mode,
        sampler=(
            optuna.samplers.RandomSampler(seed=seed)
            if space.budget.sampler == "random"
            else optuna.samplers.TPESampler(seed=seed)
        ),
        storage=storage,
        study_name=space.name,
        max_iterations=space.train.iterations,
        constraint=(space.objective.band_tolerance, space.eval.min_net_return) if constrained else None,
        owner=owner,
        out_dir=out_dir,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent or space.budget.max_concurrent)
