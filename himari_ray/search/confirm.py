"""`confirm`: retrain a search's chosen configuration K times to completion and score it on validation and,
only here and once per search, on the test split (ARCHITECTURE §2.1). Writes confirm.json and confirm.md.

Each seed trains every iteration (no early stopping); its policy is the iteration with the best validation
objective, as the search keeps each trial's best checkpoint, and only that policy meets the test split.
The test split is read once: before it is read, confirm.json records that it is being read, so a second
confirm (even after a crash mid-way) is refused unless `--force`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from himari_ray.rl.config import RobustConfig, TrialConfig
from himari_ray.schema import (
    BAND_DISTANCE,
    CONFIG,
    CONFIRM,
    DEPLOY,
    FIELDS,
    OBJECTIVE,
    TRAINING_ITERATION,
    VAL_SHARPE,
    display,
    for_split,
    shown,
)
from himari_ray.searchdir import (
    CONFIRM_JSON,
    CONFIRM_MD,
    SEARCH_JSON,
    TUNE_DIR,
    SearchManifest,
    best_trial,
    load_search_run,
    untrained_reason,
)
from himari_ray.types import UserInputError

#: Per-split metrics confirm reports for each seed: the schema's CONFIRM keys, as validation names them.
SPLIT_METRICS = shown(CONFIRM)


def choose_trial(out: Path, trial: int | None) -> tuple[int, Path, dict[str, Any]]:
    """The trial to confirm: the one asked for, or the search's best trial by the one ranking
    (`himari_ray.searchdir`), with its best report. Crashed and skipped trials are never chosen."""
    search = load_search_run(out)
    runs = {run.number: run for run in search.trials}
    if trial is not None:
        if trial not in runs:
            raise UserInputError(f"--trial {trial}: no such trial in {out} (trials: {', '.join(map(str, runs))})")
        why = untrained_reason(runs[trial])
        if why:
            raise UserInputError(f"--trial {trial}: trial {trial} {why}; confirm a trained trial")
        chosen = runs[trial]
    else:
        best = best_trial(search)
        if best is None:
            raise UserInputError(
                f"{out}: no trained trial to confirm (every trial was skipped, crashed or never reported)"
            )
        chosen = best
    assert chosen.best is not None
    return chosen.number, chosen.path, chosen.best


def check_confirmable(out: Path, force: bool) -> SearchManifest:
    """The search's manifest, or one line saying why DIR cannot be confirmed. Reads only."""
    out = Path(out)
    if not (out / SEARCH_JSON).is_file() or not (out / TUNE_DIR).is_dir():
        raise UserInputError(f"{out}: not a himari-ray search directory (no search.json and tune/)")
    manifest = SearchManifest.load(out)
    done = out / CONFIRM_JSON
    if done.is_file() and not force:
        try:
            when = json.loads(done.read_text()).get("test_read_at", "earlier")
        except json.JSONDecodeError:
            when = "earlier"
        raise UserInputError(
            f"{done}: this search's test split was already read ({when}); confirming again reuses the test data "
            "to choose: pass --force to do it anyway"
        )
    return manifest


def _config(trial_dir: Path, report: dict[str, Any]) -> dict[str, Any]:
    return report.get(CONFIG) or json.loads((trial_dir / "params.json").read_text())


def trial_config(trial_dir: Path, report: dict[str, Any], seed_offset: int) -> TrialConfig:
    """The configuration in effect at the trial's best report (Tune records it in every report; under PBT it
    is the mutated one, else the trial's params.json; plain JSON, never a pickle) on the plain train/val/test
    split (walk-forward folds have no test split) with one seed: the trial's own plus `seed_offset`."""
    try:
        config = _config(trial_dir, report)
        base = TrialConfig.model_validate(config["trial"])
    except (OSError, json.JSONDecodeError, KeyError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserInputError(f"{trial_dir / 'result.json'}: not a readable trial configuration ({first})") from None
    trial = base.with_params({k: v for k, v in config.items() if k != "trial"})
    env = trial.env.model_copy(update={"data": trial.env.data.base()})
    train = trial.train.model_copy(update={"seed": trial.train.seed + seed_offset})
    return trial.model_copy(update={"env": env, "train": train, "robust": RobustConfig()})


def train_seed(trial_json: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Train one seed to completion with real RLlib (validation only); returns the module weights of the
    iteration with the best validation objective, that iteration's metrics, and the iteration. Runs as a
    Ray task of one CPU: Ray pins its torch to that CPU, and the seeds train side by side."""
    import torch

    from himari_ray.rl.config import build_ppo_config
    from himari_ray.rl.evaluate import PolicyEvaluator

    trial = TrialConfig.model_validate(trial_json)
    torch.manual_seed(trial.train.seed)
    algo = build_ppo_config(trial).build_algo()
    val = PolicyEvaluator(trial.env, trial.eval, objective=trial.objective, preflight_cfg=trial.preflight)
    best: tuple[float, int, dict[str, Any], dict[str, Any]] | None = None
    try:
        for it in range(1, trial.train.iterations + 1):
            algo.train()
            module = algo.get_module()
            metrics = val(module)
            # A tie goes to the later iteration (more training, same score), as the search's ranking does.
            if best is None or metrics[OBJECTIVE] <= best[0]:
                state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                best = (metrics[OBJECTIVE], it, metrics, state)
    finally:
        algo.stop()
    return best[3], best[2], best[1]


def trained_module(trial: TrialConfig, weights: dict[str, Any]) -> Any:
    """The trial's RLModule with the given weights, built from its spaces and model config as RLlib does."""
    from himari_ray.env.trading import HimariTradingEnv
    from himari_ray.rl.config import module_spec

    module = module_spec(trial, HimariTradingEnv(trial.env)).build()
    module.load_state_dict(weights)
    return module


def _pick(metrics: dict[str, Any], split: str) -> dict[str, float]:
    return {for_split(k, split): float(metrics[for_split(k, split)]) for k in SPLIT_METRICS}


def _summary(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for key in rows[0]:
        col = np.array([r[key] for r in rows], dtype=np.float64)
        finite = col[np.isfinite(col)]
        nan = float("nan")
        out[key] = {
            "mean": float(finite.mean()) if len(finite) else nan,
            "std": float(finite.std(ddof=1)) if len(finite) > 1 else nan,
            "min": float(finite.min()) if len(finite) else nan,
            "max": float(finite.max()) if len(finite) else nan,
        }
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=True))
    tmp.replace(path)  # atomic: a reader never sees half a file


def run_confirm(
    out: Path, trial: int | None = None, seeds: int = 3, force: bool = False, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Confirm a search (see the module docstring); returns what confirm.json holds. Every check is made
    before anything is trained or written."""
    out = Path(out).resolve()
    check_confirmable(out, force)
    number, trial_dir, search_best = choose_trial(out, trial)
    configs = [trial_config(trial_dir, search_best, k) for k in range(seeds)]

    import ray

    from himari_ray.rl.evaluate import PolicyEvaluator
    from himari_ray.search.ray_session import start_ray

    start_ray(None)
    task = ray.remote(num_cpus=1, max_retries=0)(train_seed)
    echo(
        f"confirm: trial {number}: training {seeds} seed(s) for {configs[0].train.iterations} iterations each, "
        "side by side (validation only)"
    )
    t0 = time.monotonic()
    refs = [task.remote(cfg.model_dump(mode="json")) for cfg in configs]
    pending = list(refs)
    while pending:  # a line as each seed finishes: minutes of silence read as a hang
        done, pending = ray.wait(pending, num_returns=1)
        _, metrics, iteration = ray.get(done[0])
        seed = configs[refs.index(done[0])].train.seed
        echo(
            f"confirm: seed {seed} trained ({len(refs) - len(pending)} of {len(refs)}, {time.monotonic() - t0:.0f} s):"
            f" best validation iteration {iteration}, band distance {display(BAND_DISTANCE, metrics[BAND_DISTANCE])}"
        )
    trained = ray.get(refs)  # validation only, so far
    record: dict[str, Any] = {
        "trial": number,
        "trial_dir": trial_dir.name,
        "params": {k: v for k, v in _config(trial_dir, search_best).items() if k != "trial"},
        "search_best": {
            "iteration": search_best[TRAINING_ITERATION],
            BAND_DISTANCE: search_best[BAND_DISTANCE],
            VAL_SHARPE: search_best[VAL_SHARPE],
        },
        "seeds": [cfg.train.seed for cfg in configs],
        "iterations": configs[0].train.iterations,
        "bands": {r: list(b) for r, b in configs[0].eval.bands.items()},
        "fee": configs[0].eval.fee,
        DEPLOY: configs[0].eval.deploy,
        "test_read_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "status": "reading the test split",
    }
    _write_json(out / CONFIRM_JSON, record)  # the test split is about to be read: a rerun must know
    echo(f"confirm: scoring each seed's policy on the test split (read once; recorded in {CONFIRM_JSON})")
    per_seed = []
    for cfg, (weights, val_metrics, iteration) in zip(configs, trained, strict=True):
        test_eval = PolicyEvaluator(cfg.env, cfg.eval, "test", objective=cfg.objective, preflight_cfg=cfg.preflight)
        test_metrics = test_eval(trained_module(cfg, weights))
        per_seed.append(
            {
                "seed": cfg.train.seed,
                "iteration": iteration,
                "val": _pick(val_metrics, "val"),
                "test": _pick(test_metrics, "test"),
            }
        )
    record.update(
        status="complete",
        per_seed=per_seed,
        summary={split: _summary([s[split] for s in per_seed]) for split in ("val", "test")},
    )
    _write_json(out / CONFIRM_JSON, record)
    (out / CONFIRM_MD).write_text(format_confirm(record))
    return record


def _spread(name: str, m: dict[str, float]) -> str:
    return (
        f"{display(name, m['mean'])} ± {display(name, m['std'])} ({display(name, m['min'])}..{display(name, m['max'])})"
    )


#: How each unit reads in confirm.md's metric column: every fraction is shown as a percentage.
UNIT_NOTE = {"fraction": " (%)", "%": " (%)", "pp": " (pp)"}


def format_confirm(record: dict[str, Any]) -> str:
    """confirm.md: what was confirmed, then per split a table of every seed and the mean ± std (min..max).
    Every value is shown in its schema unit: returns, drawdowns and rates as percentages, like `analyze`."""
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record["params"].items())
    sb = record["search_best"]
    deploy = record.get(DEPLOY, "greedy")  # a record written before eval.deploy scored greedily
    lines = [
        f"# Confirmation of trial {record['trial']} ({record['trial_dir']})",
        "",
        f"Configuration: {params}. The search's best report: band distance {display(BAND_DISTANCE, sb[BAND_DISTANCE])}"
        f" pp at iteration {sb['iteration']} (val Sharpe {display(VAL_SHARPE, sb[VAL_SHARPE])}).",
        f"Retrained {len(record['seeds'])} times (seeds {', '.join(map(str, record['seeds']))}) for "
        f"{record['iterations']} iterations each; each seed's policy is its best validation iteration. "
        f"Trading metrics net of a {record['fee'] * 1e4:.1f} bps fee. Test split read at {record['test_read_at']}.",
        f"Scored as deployed: {DEPLOY_NOTE.get(deploy, deploy)}",
        "",
    ]
    for split in ("val", "test"):
        lines += [f"## {'Validation' if split == 'val' else 'Test'}", "", "| metric | " + " | ".join(
            f"seed {s['seed']} (it {s['iteration']})" for s in record["per_seed"]
        ) + " | mean ± std (min..max) |", "|---" * (len(record["per_seed"]) + 2) + "|"]  # fmt: skip
        for name in SPLIT_METRICS:
            key = for_split(name, split)
            if key not in record["summary"][split]:
                continue  # a record written by a version that did not confirm this metric
            unit = FIELDS[name].unit
            cells = [display(name, s[split][key]) for s in record["per_seed"]]
            spread = _spread(name, record["summary"][split][key])
            lines.append(f"| {key}{UNIT_NOTE.get(unit, '')} | " + " | ".join(cells) + f" | {spread} |")
        lines.append("")
    return "\n".join(lines)


#: What each deployment's scores mean, for confirm.md.
DEPLOY_NOTE = {
    "greedy": "greedy (band distance of the argmax HOLD shares).",
    "sample": "a sampler (band distance of the mean P(HOLD); trading metrics of seeded draws).",
}
