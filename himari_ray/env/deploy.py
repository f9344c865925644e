"""How a deployed policy acts, from its logits: the one rule the evaluator scores and a bundle's `act` runs.

Deployments (`eval.deploy`):
- `greedy`: the argmax of the policy's logits.
- `sample`: a draw from its probabilities with given uniforms (inverse CDF, `trading.sample_actions`).
- `selective`: trade only where the directional margin P(LONG) - P(SHORT) clears a per-regime threshold,
  HOLD elsewhere (`env.selective.SelectivePolicy`; carried mode with hysteresis). Its actions are not
  random draws: the same logits always give the same actions.

Per_bar logits are (n, 3). A carried policy's logits depend on its position, so they come as `by_position`
(n, 3, 3): the logits at bar t when the position (previous action id) is p. Its path starts flat and each
action becomes the next position; the probabilities reported are those along that path.
"""

from __future__ import annotations

import numpy as np

from himari_ray.env.selective import SelectivePolicy
from himari_ray.env.trading import carried_actions, sample_actions

DEPLOYMENTS = ("greedy", "sample", "selective")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def deployed_actions(
    deploy: str,
    logits: np.ndarray,
    regimes: np.ndarray,
    uniforms: np.ndarray | None = None,
    selective: SelectivePolicy | None = None,
    counted: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(actions, probabilities) of the policy as deployed at every decision bar, in order.

    `logits` is (n, 3) per_bar or (n, 3, 3) by position carried; `uniforms` (n,) are the draws of a sampler;
    `selective` the fitted rule of a selective deployment (its mode must match the logits' shape); `counted`
    the decisions whose HOLD share its controller steers by (the scored bars; env/control.py)."""
    logits = np.asarray(logits)
    carried = logits.ndim == 3
    if deploy not in DEPLOYMENTS:
        raise ValueError(f"deploy must be one of {list(DEPLOYMENTS)}, got {deploy!r}")
    if deploy == "sample" and uniforms is None:
        raise ValueError("a sampling deployment needs its uniforms")
    if deploy == "selective":
        if selective is None:
            raise ValueError("a selective deployment needs its fitted SelectivePolicy")
        if (selective.mode == "carried") != carried:
            raise ValueError(f"a {selective.mode} selective policy cannot act on logits of shape {logits.shape}")
        probs = softmax(logits)
        actions = selective.actions(probs, regimes, counted)
        if carried:
            return actions, probs[np.arange(len(actions)), np.r_[0, actions[:-1]]]
        return actions, probs
    if carried:
        actions = carried_actions(logits, uniforms if deploy == "sample" else None)
        return actions, softmax(logits[np.arange(len(actions)), np.r_[0, actions[:-1]]])
    probs = softmax(logits)
    return (sample_actions(probs, uniforms) if deploy == "sample" else probs.argmax(axis=-1)), probs
