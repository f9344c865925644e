"""The reward landscape of a whole space: uniform draws of its reward parameters classified by the preflight."""

from __future__ import annotations

from typing import Any

import numpy as np

from himari_ray.data.dataset import load_dataset
from himari_ray.env.preflight import CONTESTED, RegimePreflight, preflight
from himari_ray.rl.config import TRAIN_PARAMS
from himari_ray.search.space import SearchSpace, ordered_search


def sample_landscape_params(space: SearchSpace, n: int, seed: int) -> list[dict[str, Any]]:
    """n uniform (log-uniform where the space says log) draws of every searched parameter that shapes the
    reward landscape (PPO settings are left out), honouring `when` conditions."""
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n):
        point: dict[str, Any] = {}
        for k, r in ordered_search(space):
            u = rng.random()
            if not r.active(point):
                continue
            if r.choices is not None:
                point[k] = r.choices[int(u * len(r.choices))]
                continue
            value = float(np.exp(np.log(r.low) + u * np.log(r.high / r.low))) if r.log else r.low + u * (r.high - r.low)
            point[k] = round(value) if r.integer else value
        draws.append({k: v for k, v in point.items() if k not in TRAIN_PARAMS})
    return draws


def preflight_space(
    space: SearchSpace, n: int, seed: int
) -> tuple[list[RegimePreflight], dict[str, dict[str, float]], float]:
    """The seed-value table, and over n sampled configurations: the share of each verdict per regime (percent)
    and the share contested in all four regimes."""
    base = space.trial_config()
    dataset = load_dataset(base.env.data)
    seed_table = preflight(dataset, base.env, space.preflight)
    shares: dict[str, dict[str, float]] = {}
    all_contested = 0
    for params in sample_landscape_params(space, n, seed):
        results = preflight(dataset, base.with_params(params).env, space.preflight)
        all_contested += all(r.verdict == CONTESTED for r in results)
        for r in results:
            row = shares.setdefault(r.regime, {})
            row[r.verdict] = row.get(r.verdict, 0.0) + 100.0 / n
    return seed_table, shares, (100.0 * all_contested / n if n else float("nan"))
