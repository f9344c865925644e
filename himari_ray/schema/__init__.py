"""The trial report schema: every key a trial report carries, defined once (ARCHITECTURE §5).

A report is the flat dict a trial hands `tune.report` after every iteration (Tune adds its own bookkeeping
keys and writes one JSON object per report to the trial's `result.json`). The writers
(`rl/evaluate.py`, `rl/trainable.py`) and the readers (`report/`, `search/callbacks.py`, `search/study.py`)
use the names below, never string literals, so renaming or adding a key happens here.

**Adding a key is one line**: `NEW_KEY = key("new_key", float, "What it is.", unit, label=..., views=...)`,
plus its writer. `views` says where it is shown: `ANALYZE` (a column of `analyze` and `report`), `CONFIRM`
(a per-split metric of `confirm`; a `val_` key becomes `test_` there) and `STUDY` (a user attribute of each
Optuna trial); each reader derives what it shows from `shown(view)`, with the key's label and unit
(`display`). Readers go through `value()` / `read_report()`, so a report without it (a preflight-skipped
trial, a search written before the key existed) reads as the key's `absent` value (NaN for numbers)
instead of crashing. No other module spells a key as a string literal (`tests/test_schema.py`).

The machinery (`Field`, `key`, the registry and the readers) is in `schema/registry.py`; every name is
imported from here. Nothing here imports from the rest of the package, nor Ray.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# Re-exported: every reader imports the schema's names, machinery included, from himari_ray.schema.
from himari_ray.schema.registry import (  # noqa: F401
    ANALYZE,
    CONFIRM,
    FIELDS,
    STUDY,
    Field,
    describe,
    display,
    key,
    label,
    number,
    read_report,
    shown,
    value,
)
from himari_ray.types import ACTION_NAMES, REGIME_NAMES

#: Regime names a report carries shares for: the four regimes and `ALL` (every validation decision).
SHARE_GROUPS: tuple[str, ...] = (*REGIME_NAMES, "ALL")


# ---- Tune's bookkeeping (written by Tune around every report) -----------------------------------------------
TRAINING_ITERATION = key("training_iteration", int, "Reports so far in this trial (Tune counts from 1).", source="tune")
TIME_TOTAL_S = key("time_total_s", float, "Wall-clock seconds the trial has run.", "s", source="tune")
TIMESTAMP = key("timestamp", int, "Unix time of the report.", "s", source="tune")
CONFIG = key("config", dict, "The trial's config: the trial settings and each searched value.", source="tune")
TRIAL_ID = key("trial_id", str, "Tune's trial id (also the suffix of the trial directory).", source="tune")

# ---- What the trial was and how it ran --------------------------------------------------------------------------
ITERATION = key("iteration", int, "PPO iterations trained when this report was made (0: not trained).")
PREFLIGHT = key("preflight", str, "The preflight's band conflicts when it ruled the configuration out, else empty.")
PREFLIGHT_SKIPPED = key("preflight_skipped", bool, "The preflight ruled the configuration out: never trained.")
MEMBERS = key("members", int, "Runs averaged into this report (seeds x walk-forward folds) when more than one.")
EPISODE_RETURN_MEAN = key("episode_return_mean", float, "Mean training episode return (absent until one ends).")
ENV_STEPS_SAMPLED = key("env_steps_sampled", int, "Env steps sampled over the trial's life.", "steps")
APPLIED_LR = key("applied_lr", float, "Learning rate read from the learner's optimizer (NaN where copies disagree).")
APPLIED_ENTROPY_COEFF = key("applied_entropy_coeff", float, "Entropy coefficient read from the learner.")
APPLIED_GAMMA = key("applied_gamma", float, "Discount read from the learner (train.gamma, or the position mode's).")

# ---- The objective and what it is made of (validation split) ---------------------------------------------------
OBJECTIVE = key("objective", float, "What the single-objective search minimises: band distance - Sharpe tie-break.")
BAND_DISTANCE = key(
    "band_distance",
    float,
    "Percentage points HOLD% lies outside its band, summed over regimes.",
    "pp",
    label="band pp",
    views=(ANALYZE, CONFIRM, STUDY),
)
BAND_DISTANCE_MEAN = key("band_distance_mean", float, "Robust trials: mean band distance over members.", "pp")
BAND_DISTANCE_WORST = key(
    "band_distance_worst", float, "Robust trials: the worst member's band distance.", "pp", label="band worst"
)
PROFIT_OK = key("profit_ok", bool, "Validation net return meets the space's profit constraint (True without one).")
LEAK_ALARM = key(
    "leak_alarm", bool, "Hit rate on traded validation bars too high for honest features: look-ahead?", views=(CONFIRM,)
)

# ---- Trading quality of the greedy policy on validation, net of the fee ----------------------------------------
VAL_NET_RETURN = key(
    "val_net_return",
    float,
    "Compounded net return over the validation split.",
    "fraction",
    label="net %",
    views=(ANALYZE, CONFIRM, STUDY),
)
VAL_BUY_AND_HOLD = key(
    "val_buy_and_hold",
    float,
    "Buy-and-hold return over the same bars, for comparison.",
    "fraction",
    label="b&h %",
    views=(ANALYZE, CONFIRM),
)
VAL_SHARPE = key(
    "val_sharpe",
    float,
    "Annualised Sharpe ratio (sqrt 8760) of net hourly returns.",
    label="sharpe",
    views=(ANALYZE, CONFIRM, STUDY),
)
VAL_SHARPE_MEAN = key("val_sharpe_mean", float, "Robust trials: mean Sharpe over members.")
VAL_SHARPE_WORST = key("val_sharpe_worst", float, "Robust trials: the worst member's Sharpe.", label="sharpe worst")
VAL_SORTINO = key("val_sortino", float, "Annualised Sortino ratio of net hourly returns.", views=(CONFIRM,))
VAL_MAX_DRAWDOWN = key(
    "val_max_drawdown",
    float,
    "Largest peak-to-trough fall of the equity curve.",
    "fraction",
    label="maxdd %",
    views=(ANALYZE, CONFIRM),
)
VAL_TURNOVER = key(
    "val_turnover",
    float,
    "Mean absolute position change per bar.",
    "units/bar",
    label="turnover",
    views=(ANALYZE, CONFIRM),
)
VAL_WIN_RATE = key(
    "val_win_rate", float, "Share of traded bars whose position earned a positive return.", "fraction", views=(CONFIRM,)
)
VAL_TRADED_SHARE = key("val_traded_share", float, "Share of validation bars with a position.", "fraction")


# ---- Skill beside the score: a direction-randomised null of the same trades (env/null.py) --------------------
VAL_NULL_RETURN = key(
    "val_null_return",
    float,
    "Median net return of direction-randomised nulls: the same bars traded, holding periods and fees.",
    "fraction",
    label="null %",
    views=(ANALYZE, CONFIRM),
)
VAL_EDGE = key(
    "val_edge",
    float,
    "Net return minus the nulls' median: what the directions of the trades earned, fees and timing held equal.",
    "fraction",
    label="edge %",
    views=(ANALYZE, CONFIRM, STUDY),
)
VAL_EDGE_P = key(
    "val_edge_p",
    float,
    "One-sided p-value of the net return against the nulls, (1 + #{null >= it}) / (K + 1): small means skill.",
    "p",
    label="p(edge)",
    views=(ANALYZE, CONFIRM, STUDY),
)
VAL_EDGE_SHARPE = key("val_edge_sharpe", float, "Sharpe minus the nulls' median Sharpe.", views=(CONFIRM,))
VAL_EDGE_SHARPE_P = key(
    "val_edge_sharpe_p", float, "One-sided p-value of the Sharpe against the nulls' Sharpes.", "p", views=(CONFIRM,)
)
FEASIBLE = key(
    "feasible", bool, "The report meets the search's constraints: profit and, when constrained, band tolerance."
)


def val(metric: str) -> str:
    """The report key of a trading metric on validation: `val_<metric>` (`trading_metrics` names)."""
    name = f"val_{metric}"
    if name not in FIELDS:
        raise KeyError(f"{name!r} is not a report key; register it in himari_ray/schema/__init__.py")
    return name


# ---- Per-regime action shares of the greedy policy (percent of validation decisions) -----------------------------
def action_pct(action: str, regime: str) -> str:
    """`<action>_pct_<regime>`: percent of the regime's validation decisions taking the action."""
    return f"{action.lower()}_pct_{regime}"


def hold_pct(regime: str) -> str:
    """`hold_pct_<regime>`: percent of the regime's validation decisions that HOLD (`ALL`: every decision)."""
    return action_pct("HOLD", regime)


for _action in ACTION_NAMES:
    for _regime in SHARE_GROUPS:
        # The deployed HOLD share of each regime: what the bands are about, in confirm and on each study trial.
        shown_in = (CONFIRM, STUDY) if _action == "HOLD" and _regime != "ALL" else ()
        key(
            action_pct(_action, _regime),
            float,
            f"{_action} share of {_regime} validation decisions.",
            "%",
            views=shown_in,
        )

HOLD_PCT_ALL = hold_pct("ALL")


# ---- What the policy would do if it sampled, and how sure it is ------------------------------------------------
def hold_prob(regime: str) -> str:
    """`hold_prob_<regime>`: the policy's mean P(HOLD) in percent over the regime's decisions."""
    return f"hold_prob_{regime}"


def decisiveness(regime: str) -> str:
    """`decisiveness_<regime>`: mean top-action probability, 1/3 (uniform) .. 1 (certain)."""
    return f"decisiveness_{regime}"


for _regime in SHARE_GROUPS:
    _per_regime = (CONFIRM,) if _regime != "ALL" else ()
    key(
        hold_prob(_regime),
        float,
        f"Mean P(HOLD) over {_regime} decisions: the HOLD% a sampling policy expects.",
        "%",
        views=_per_regime,
    )
    key(
        decisiveness(_regime),
        float,
        f"Mean top-action probability over {_regime} decisions (1/3 uniform .. 1).",
        views=_per_regime,
    )


def hit_rate(regime: str) -> str:
    """`hit_rate_<regime>`: share of the regime's traded bars whose position earned a positive return."""
    return f"hit_rate_{regime}"


def hit_interval(regime: str) -> tuple[str, str]:
    """`hit_low_<regime>`, `hit_high_<regime>`: the 95% Wilson interval of that hit rate."""
    return f"hit_low_{regime}", f"hit_high_{regime}"


def traded(regime: str) -> str:
    """`traded_<regime>`: bars of the regime on which the deployed policy held a position."""
    return f"traded_{regime}"


def breakeven_p(regime: str) -> str:
    """`breakeven_p_<regime>`: the preflight's break-even hit rate p* of the regime (inf: trading cannot pay)."""
    return f"breakeven_p_{regime}"


def fee_breakeven_p(regime: str) -> str:
    """`fee_breakeven_p_<regime>`: the hit rate the deployed trades of the regime need to pay their fees."""
    return f"fee_breakeven_p_{regime}"


def threshold(regime: str) -> str:
    """`threshold_<regime>`: a selective deployment's entry threshold on P(LONG) - P(SHORT) (> 1: never trades)."""
    return f"threshold_{regime}"


for _regime in REGIME_NAMES:
    key(hit_rate(_regime), float, f"Hit rate on {_regime}'s traded bars.", "fraction", views=(CONFIRM,))
    for _end, _name in zip(("lower", "upper"), hit_interval(_regime), strict=True):
        key(_name, float, f"The {_end} end of the 95% Wilson interval of {_regime}'s hit rate.", "fraction")
    key(traded(_regime), int, f"{_regime} bars on which the deployed policy held a position.", views=(CONFIRM,))
    key(breakeven_p(_regime), float, f"The preflight's break-even hit rate p* of {_regime} under the reward.")
    key(
        fee_breakeven_p(_regime),
        float,
        f"Hit rate {_regime}'s deployed trades need to pay the fee: 0.5 + fee x position changes / (2 sum |r|).",
    )
    key(threshold(_regime), float, f"{_regime}'s selective entry threshold on P(LONG) - P(SHORT) (NaN: not selective).")

BAND_DISTANCE_PROB = key(
    "band_distance_prob", float, "Band distance of the mean HOLD probabilities.", "pp", views=(CONFIRM,)
)
DEPLOY = key(
    "deploy",
    str,
    "How the policy is deployed, hence scored (eval.deploy): greedy, sample or selective.",
    views=(STUDY,),
)
DEPLOYED_HOLD_PCT = key(
    "deployed_hold_pct",
    float,
    "Overall HOLD% of the policy as deployed (eval.deploy): its greedy share, or its mean P(HOLD) as a sampler.",
    "%",
)


def deployed_hold(report: Mapping[str, Any]) -> float:
    """Overall HOLD% of the deployed policy; a report from before `eval.deploy` existed was greedy."""
    v = number(report, DEPLOYED_HOLD_PCT)
    return number(report, HOLD_PCT_ALL) if math.isnan(v) else v


def deploy_of(eval_section: Mapping[str, Any] | None) -> str:
    """`greedy` or `sample`: an `eval:` section's (dumped `EvalConfig`) deployment; older ones were greedy."""
    return str((eval_section or {}).get("deploy", "greedy"))


def deployment(report: Mapping[str, Any]) -> str:
    """How a report's trial is deployed: its `deploy` key, else (reports written before it) the trial config
    Tune puts in each result."""
    own = value(report, DEPLOY)
    return own if own else deploy_of(((report.get(CONFIG) or {}).get("trial") or {}).get("eval"))


LEAK_BASELINE_HIT_RATE = key(
    "leak_baseline_hit_rate", float, "Hit rate of a train-only logistic baseline trading as many bars.", "fraction"
)
LEAK_P_VS_BASELINE = key("leak_p_vs_baseline", float, "One-sided p-value: policy hit rate > baseline + margin.")
LEAK_P_VS_CEILING = key("leak_p_vs_ceiling", float, "One-sided p-value: policy hit rate > the honest ceiling.")
BEST_OBJECTIVE = key("best_objective", float, "Lowest objective the trial has reported so far (this report included).")
BEST_ITERATION = key("best_iteration", int, "Iteration of that report; its checkpoint is kept beside the latest.")
BEST_BAND_DISTANCE = key("best_band_distance", float, "Band distance of the trial's best report.", "pp")
BEST_VAL_SHARPE = key("best_val_sharpe", float, "Validation Sharpe of the trial's best report.")

# ---- Throughput, memory and PPO's own statistics (one per report) --------------------------------------------
ENV_STEPS_PER_S = key(
    "env_steps_per_s", float, "Env steps per second of this iteration, sampling and learning.", "steps/s"
)
LEARNER_SAMPLES_PER_S = key("learner_samples_per_s", float, "Samples the learner trained per second of update.", "1/s")
SAMPLE_S = key("sample_s", float, "Seconds sampling took in this iteration.", "s")
LEARN_S = key("learn_s", float, "Seconds the learner update took in this iteration.", "s")
GPU_PEAK_MEM_GB = key("gpu_peak_mem_gb", float, "Peak CUDA memory allocated by the trial process (NaN: no GPU).", "GB")
GPU_RESERVED_GB = key(
    "gpu_reserved_gb",
    float,
    "Peak CUDA memory the trial's caching allocator held (what nvidia-smi sees, less the context).",
    "GB",
)
HOST_PEAK_RSS_GB = key("host_peak_rss_gb", float, "Peak resident memory of the trial process.", "GB")
POLICY_LOSS = key("policy_loss", float, "PPO's clipped policy loss of the last update.")
ENTROPY = key("entropy", float, "Mean policy entropy in the last update.", "nats")
KL = key("kl", float, "Mean KL between the sampling and the updated policy.")
VF_EXPLAINED_VAR = key("vf_explained_var", float, "Value function's explained variance of the returns.")


def for_split(name: str, split: str) -> str:
    """A validation key as another split names it (`val_sharpe` -> `test_sharpe` in confirm); split-free keys
    (band distance, HOLD shares) keep their name."""
    return f"{split}_{name.removeprefix('val_')}" if name.startswith("val_") else name


def split_metric(split: str, metric: str) -> str:
    """The report key of a trading metric on a split: `val_<metric>` in searches, `test_<metric>` in confirm."""
    return val(metric) if split == "val" else f"{split}_{metric}"


# ---- Values in effect where they act (one per reward parameter) ------------------------------------------------
def applied(param: str) -> str:
    """`applied_<param>`: a reward parameter read back from every env copy (NaN where copies disagree)."""
    return f"applied_{param}"
