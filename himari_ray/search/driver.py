"""The search driver: output directories, Ray start-up, the Tune run over a space, and resume."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from himari_ray.data.dataset import DataSpec
from himari_ray.search.callbacks import collapse_stopper, report_printer
from himari_ray.search.sampling import (
    OBJECTIVE,
    make_searcher,
    objective_spec,
    optuna_distributions,
    tune_distributions,
)
from himari_ray.search.space import SearchSpace, load_space
from himari_ray.types import UserInputError, trial_number


def trial_dirname(trial: Any) -> str:
    """Short, sortable trial directories (Tune's default embeds the whole nested config)."""
    return f"trial_{trial_number(trial.experiment_tag):04d}_{trial.trial_id}"


def default_out_dir(space: SearchSpace) -> Path:
    return Path("runs") / f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_out_dir(out: Path) -> None:
    """Refuse to write into an existing non-empty directory: nothing already on disk is overwritten."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserInputError(f"{out}: --out exists and is not empty; choose a new directory")


def default_storage_url(out: Path) -> str:
    return f"sqlite:///{Path(out).resolve() / 'study.db'}"


def _trainable(space: SearchSpace):
    from ray import tune

    from himari_ray.rl.trainable import train_trial

    members = max(space.robust.folds, 1) * space.robust.seeds  # each member keeps its own env runners
    runners = space.train.num_env_runners * members
    bundles = [{"CPU": space.resources.cpus_per_trial, "GPU": space.resources.gpus_per_trial}] + [
        {"CPU": 1.0}
        for _ in range(runners)  # one bundle per remote env runner
    ]
    return tune.with_resources(train_trial, tune.PlacementGroupFactory(bundles))


def _start_ray(address: str | None) -> None:
    import optuna
    import ray

    # Our one line per report replaces Tune's progress tables and Optuna's per-trial log lines.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if ray.is_initialized():
        return
    if address is not None:
        # Ray 2.60 clusters started with a token require it from every driver (see cluster.yaml).
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # a refused join is our one line, not retries
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserInputError(
                f"--address {address}: cannot join the Ray cluster ({str(exc).splitlines()[0]})"
            ) from None
    else:
        # address="local": always a fresh local instance. Without it Ray joins whatever cluster `ray start`
        # (or a test's cluster) last left running on this machine; joining one is what --address is for.
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")


def run_search(
    space: SearchSpace,
    space_path: Path,
    out: Path,
    trials: int,
    seed: int,
    storage_url: str | None = None,
    address: str | None = None,
) -> Path:
    """Run the search; returns the output directory. Layout: space.yaml, search.json, study.db (unless
    another storage is given), tune/<trial dirs>. Everything is checked before anything is written."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining

    from himari_ray.search.study import check_compatible, fail_running, open_storage

    check_out_dir(out)
    out = out.resolve()
    url = storage_url or default_storage_url(out)
    _, mode = objective_spec(space)
    if storage_url is not None and space.scheduler.kind != "asha":
        raise UserInputError(
            f"--storage: a {space.scheduler.kind} search draws its own population; it keeps no Optuna study"
        )
    if storage_url is not None:  # an external study: refuse before touching it or the disk
        storage = open_storage(storage_url)
        check_compatible(storage, space.name, optuna_distributions(space), mode if isinstance(mode, list) else [mode])
    out.mkdir(parents=True, exist_ok=True)
    (out / "space.yaml").write_text(space_path.read_text())
    trial_cfg = space.trial_config()
    iterations = trial_cfg.train.iterations
    # What `analyze` and `--resume` need, from files alone.
    manifest = {
        "space": space.name,
        "family": space.family,
        "trials": trials,
        "seed": seed,
        "iterations": iterations,
        "searched": sorted(space.search),
        "collapse": space.collapse.model_dump(),
        "objective": space.objective.model_dump(),
        "eval": space.eval.model_dump(mode="json"),
        "robust": space.robust.model_dump(),
        "storage": url if space.scheduler.kind == "asha" else None,
        "data": space.data.model_dump(),
    }
    (out / "search.json").write_text(json.dumps(manifest, indent=2))
    pbt = space.scheduler.kind in ("pbt", "pb2")
    storage = None if pbt else open_storage(url)  # PBT draws its own population: no Optuna study
    _start_ray(address)

    param_space: dict[str, Any] = {"trial": trial_cfg.model_dump(mode="json")}
    if pbt:
        param_space.update(tune_distributions(space))
        search_alg = tune.search.BasicVariantGenerator(random_state=seed)
        common = {
            "time_attr": "training_iteration",
            "metric": OBJECTIVE,
            "mode": "min",
            "perturbation_interval": space.scheduler.perturbation_interval,
            "quantile_fraction": space.scheduler.quantile_fraction,
            "synch": space.scheduler.synch,
        }
        if space.scheduler.kind == "pb2":
            from ray.tune.schedulers.pb2 import PB2

            bounds = {k: [space.search[k].low, space.search[k].high] for k in space.scheduler.mutate}
            scheduler = PB2(hyperparam_bounds=bounds, **common)
        else:
            scheduler = PopulationBasedTraining(
                hyperparam_mutations=tune_distributions(space, space.scheduler.mutate), **common
            )
    else:
        search_alg = make_searcher(space, seed, storage, owner=str(out))
        scheduler = ASHAScheduler(
            metric=OBJECTIVE,
            mode="min",
            time_attr="training_iteration",
            max_t=iterations,
            grace_period=min(space.scheduler.grace_period, iterations),
            reduction_factor=space.scheduler.reduction_factor,
        )
    tuner = tune.Tuner(
        _trainable(space),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=trials,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(out),
            stop=collapse_stopper(space.collapse),
            callbacks=[report_printer()],
            verbose=0,
            # Each trial keeps its best checkpoint by the objective (every new best is checkpointed) and Tune
            # always keeps the latest beside it, for resume. PBT restores trials from other trials' older
            # checkpoints: keep them all there.
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=None if pbt else 1, checkpoint_score_attribute=OBJECTIVE, checkpoint_score_order="min"
            ),
        ),
    )
    tuner.fit()
    if storage is not None:
        fail_running(storage, space.name, str(out))
    return out


def resume_search(out: Path, address: str | None = None) -> Path:
    """Continue a search whose driver died: finished trials stay, unfinished ones continue from their last
    checkpoint, and the total number of trials is the one first asked for."""
    from ray import tune

    from himari_ray.search.study import fail_running, open_storage

    out = Path(out).resolve()
    manifest_path = out / "search.json"
    if not manifest_path.is_file() or not (out / "tune").is_dir() or not (out / "space.yaml").is_file():
        raise UserInputError(f"{out}: not a himari-ray search directory (no search.json, space.yaml and tune/)")
    manifest = json.loads(manifest_path.read_text())
    space, _ = load_space(str(out / "space.yaml"))
    if manifest["data"]["source"] == "dataset":  # a search run with --data: train on that dataset again
        space = space.model_copy(update={"data": DataSpec.model_validate(manifest["data"])})
    if not tune.Tuner.can_restore(str(out / "tune")):
        raise UserInputError(f"{out}: the search has no saved Tune state to resume from")
    storage = open_storage(manifest["storage"]) if manifest["storage"] else None
    _start_ray(address)
    tuner = tune.Tuner.restore(
        str(out / "tune"), trainable=_trainable(space), resume_unfinished=True, resume_errored=True
    )
    tuner.fit()
    if storage is not None:
        fail_running(storage, space.name, str(out))
    return out
