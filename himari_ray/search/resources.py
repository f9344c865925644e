"""What one trial asks Ray for (its placement-group bundles and its RLlib GPU shares), and the refusal of a
search whose trial cannot fit the Ray cluster at all (Tune would otherwise wait for it forever, silently).

One name per concept: `resources.gpus_per_trial` is the GPU share of the trial process, where the learner
trains (and the local env runner infers); `train.num_gpus_per_env_runner` is each remote runner's share.
"""

from __future__ import annotations

from typing import Any

from himari_ray.rl.config import TrialConfig
from himari_ray.search.space import SearchSpace
from himari_ray.types import UserInputError


def members_per_trial(space: SearchSpace) -> int:
    """PPO runs inside one trial (seeds x walk-forward folds); each keeps its own remote env runners."""
    return max(space.robust.folds, 1) * space.robust.seeds


def trial_bundles(space: SearchSpace) -> list[dict[str, float]]:
    """Bundle 0: the trial process (learner, local env runner); then one bundle per remote env runner."""
    t = space.train
    head = {"CPU": space.resources.cpus_per_trial, "GPU": space.resources.gpus_per_trial}
    runner = {"CPU": 1.0, "GPU": t.num_gpus_per_env_runner}
    return [head] + [dict(runner) for _ in range(t.num_env_runners * members_per_trial(space))]


def trial_config(space: SearchSpace) -> TrialConfig:
    """The space's base trial with the trial's GPU share given to its learner (what RLlib then uses)."""
    base = space.trial_config()
    given = space.train.num_gpus_per_learner
    gpus = space.resources.gpus_per_trial
    if given not in (0.0, gpus):
        raise UserInputError(
            f"space {space.name}: train.num_gpus_per_learner {given:g} differs from resources.gpus_per_trial "
            f"{gpus:g}; set only resources.gpus_per_trial (the learner gets it)"
        )
    return base.model_copy(update={"train": base.train.model_copy(update={"num_gpus_per_learner": gpus})})


def _fmt(res: dict[str, float]) -> str:
    return f"{res.get('CPU', 0.0):g} CPU, {res.get('GPU', 0.0):g} GPU"


def fit_problem(bundles: list[dict[str, float]], nodes: list[dict[str, float]]) -> str | None:
    """Why a trial with these bundles can never be placed on nodes with these resources (None: it can).
    Tune's default placement (PACK) may spread bundles over nodes, but no bundle spans two nodes."""
    need = {k: sum(b.get(k, 0.0) for b in bundles) for k in ("CPU", "GPU")}
    have = {k: sum(n.get(k, 0.0) for n in nodes) for k in ("CPU", "GPU")}
    if any(need[k] > have[k] + 1e-9 for k in need):
        return f"a trial needs {_fmt(need)} in all; the Ray cluster has {_fmt(have)}"
    for b in bundles:
        if not any(all(b.get(k, 0.0) <= n.get(k, 0.0) + 1e-9 for k in ("CPU", "GPU")) for n in nodes):
            return f"a trial needs {_fmt(b)} on one node; no node of the Ray cluster has that"
    return None


def cluster_nodes() -> list[dict[str, float]]:
    """Resources of the live nodes of the Ray cluster this process is connected to."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def check_fits_cluster(space: SearchSpace, nodes: list[dict[str, Any]] | None = None) -> None:
    """Refuse, in one line, a search whose trial cannot fit the cluster (call it right after Ray starts)."""
    problem = fit_problem(trial_bundles(space), cluster_nodes() if nodes is None else nodes)
    if problem:
        raise UserInputError(
            f"space {space.name}: {problem} (resources.cpus_per_trial, resources.gpus_per_trial, "
            f"train.num_env_runners); lower them or use a bigger cluster"
        )
