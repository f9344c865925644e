"""The search driver: output directories, the Tune run over a space, and resume (Ray start-up: `ray_session`)."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any

from himari_ray import __version__
from himari_ray.data.dataset import DataSpec
from himari_ray.schema import TRAINING_ITERATION
from himari_ray.search.callbacks import collapse_stopper, report_printer
from himari_ray.search.integrity import DirectorySigner, signing_callback
from himari_ray.search.interrupt import GracefulInterrupt
from himari_ray.search.ray_session import start_ray
from himari_ray.search.resources import check_fits_cluster, trial_bundles, trial_config
from himari_ray.search.resume_check import plan_resume
from himari_ray.search.sampling import (
    OBJECTIVE,
    make_searcher,
    objective_spec,
    optuna_distributions,
    tune_distributions,
)
from himari_ray.search.space import SearchSpace, load_space
from himari_ray.search.storage import check_tune_storage, mirror_trials, probe_new_storage, probe_study
from himari_ray.search.validate import check_address, check_buildable
from himari_ray.searchdir import SEARCH_JSON, SPACE_YAML, TUNE_DIR, SearchManifest, load_search_run, trained
from himari_ray.types import (
    STUDY_FILE,
    SearchFailed,
    SearchInterrupted,
    UserInputError,
    is_redacted,
    redact,
    trial_number,
)

#: Retries of a trial whose worker died (a lost node, a reclaimed spot instance); each restarts from its last
#: checkpoint. A trial that fails this many times more is given up (and FAIL in the study).
MAX_TRIAL_FAILURES = 3


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

    return tune.with_resources(train_trial, tune.PlacementGroupFactory(trial_bundles(space)))


def run_search(
    space: SearchSpace,
    space_path: Path,
    out: Path,
    trials: int,
    seed: int,
    storage_url: str | None = None,
    address: str | None = None,
    tune_storage: str | None = None,
) -> Path:
    """Run the search; returns the output directory. Layout: space.yaml, search.json, study.db (unless
    another storage is given), tune/<trial dirs>. Everything is checked before anything is written.

    `tune_storage` (a multi-node cluster's object store or shared file system) holds the trials while they
    run, so a trial restarted on another node finds its checkpoint; `tune/` receives a copy at the end."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining

    from himari_ray.search.study import check_compatible, command_line, describe_study, open_storage

    check_out_dir(out)
    if address is not None:
        check_address(address)
    tune_storage = check_tune_storage(tune_storage, out)
    out = out.resolve()
    url = storage_url or default_storage_url(out)
    _, mode = objective_spec(space)
    if storage_url is not None and space.scheduler.kind != "asha":
        raise UserInputError(
            f"--storage: a {space.scheduler.kind} search draws its own population; it keeps no Optuna study"
        )
    if storage_url is not None:  # an external study: refuse before touching it or the disk
        probe_new_storage(storage_url)  # read-only: another application's database is refused unwritten
        storage = open_storage(storage_url)
        check_compatible(storage, space.name, optuna_distributions(space), mode if isinstance(mode, list) else [mode])
    check_buildable(space, space_path)  # it takes seconds: after the cheap checks
    trial_cfg = trial_config(space)
    start_ray(address)
    check_fits_cluster(space)  # a trial that can never be placed fails now, not by waiting forever
    out.mkdir(parents=True, exist_ok=True)
    (out / "space.yaml").write_text(space_path.read_text())
    iterations = trial_cfg.train.iterations
    # What `analyze` and `--resume` need, from files alone.
    search_id = uuid.uuid4().hex
    manifest = SearchManifest(
        space=space.name,
        family=space.family,
        trials=trials,
        seed=seed,
        iterations=iterations,
        searched=sorted(space.search),
        collapse=space.collapse.model_dump(),
        objective=space.objective.model_dump(),
        eval=space.eval.model_dump(mode="json"),
        robust=space.robust.model_dump(),
        # The default study lives in the directory and is found relative to it (a moved or copied search
        # resumes against its own files); an external --storage URL is kept without its password, which
        # `--resume --storage URL` gives again (or the driver reads from its own place, e.g. PGPASSWORD).
        storage=redact(storage_url) if storage_url is not None and space.scheduler.kind == "asha" else None,
        study_file=STUDY_FILE if storage_url is None and space.scheduler.kind == "asha" else None,
        search_id=search_id,
        # One experiment per search under a given Tune storage.
        tune_storage=None if tune_storage is None else f"{tune_storage}/{space.name}-{search_id[:12]}",
        data=space.data.model_dump(),
        version=__version__,
    )
    manifest.write(out)
    pbt = space.scheduler.kind in ("pbt", "pb2")
    storage = None if pbt else open_storage(url)  # PBT draws its own population: no Optuna study

    param_space: dict[str, Any] = {"trial": trial_cfg.model_dump(mode="json")}
    if pbt:
        param_space.update(tune_distributions(space))
        search_alg = tune.search.BasicVariantGenerator(random_state=seed)
        common = {
            "time_attr": TRAINING_ITERATION,
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
        search_alg = make_searcher(space, seed, storage, owner=manifest.search_id, out_dir=str(out))
        metric, _ = objective_spec(space)
        describe_study(
            storage,
            space.name,
            metric if isinstance(metric, list) else [metric],
            {
                "command": command_line(sys.argv),
                "space_file": str(Path(space_path).resolve()),
                "himari_ray_version": __version__,
                "out": str(out),
            },
        )
        scheduler = ASHAScheduler(
            metric=OBJECTIVE,
            mode="min",
            time_attr=TRAINING_ITERATION,
            max_t=iterations,
            grace_period=min(space.scheduler.grace_period, iterations),
            reduction_factor=space.scheduler.reduction_factor,
        )
    interrupt = GracefulInterrupt(str(out))
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
            name="tune" if manifest.tune_storage is None else manifest.tune_storage.rsplit("/", 1)[1],
            storage_path=str(out) if tune_storage is None else tune_storage,
            stop=collapse_stopper(space.collapse),
            callbacks=[
                report_printer(total_trials=trials, iterations=iterations),
                signing_callback(out),
                interrupt.callback(),
            ],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=MAX_TRIAL_FAILURES),
            # Each trial keeps its best checkpoint by the objective (every new best is checkpointed) and Tune
            # always keeps the latest beside it, for resume. PBT restores trials from other trials' older
            # checkpoints: keep them all there.
            checkpoint_config=tune.CheckpointConfig(
                # 2: the best by the objective, and one more that a state saved a moment earlier may still name
                num_to_keep=None if pbt else 2,
                checkpoint_score_attribute=OBJECTIVE,
                checkpoint_score_order="min",
            ),
        ),
    )
    return _fit(tuner, interrupt, out, storage, space.name, manifest.search_id, manifest.tune_storage)


def _fit(
    tuner: Any,
    interrupt: GracefulInterrupt,
    out: Path,
    storage: Any,
    study: str,
    owner: str,
    remote: str | None = None,
) -> Path:
    """Run Tune with Ctrl-C handled and the directory signed; what ends the run decides the study's states:
    an interrupt leaves interrupted trials RUNNING (resume continues them), a finish or a crash (a full disk)
    leaves none RUNNING. Trials kept on other storage (`remote`) are copied into the directory first."""
    from himari_ray.search.study import fail_running

    reserve = DiskReserve(out)
    interrupt.install()
    try:
        tuner.fit()
    except BaseException:
        reserve.release()  # a full disk must still take the study's last writes
        if storage is not None and not interrupt.requested:
            fail_running(storage, study, owner)
        raise
    finally:
        interrupt.uninstall()
        reserve.release()
        if remote is not None:
            try:
                mirror_trials(remote, out)
            except OSError as exc:  # the store went away: the trials are still there, the run's outcome stands
                print(
                    f"himari-ray search: could not copy the trials from {remote} ({exc}); they stay there", flush=True
                )
        DirectorySigner(out).sign()
    if interrupt.requested:
        if remote is not None:
            raise SearchInterrupted(
                f"interrupted; the trials so far are in {out} (a --tune-storage search does not resume)"
            )
        raise SearchInterrupted(f"interrupted; resume with: himari-ray search --resume {out}")
    if storage is not None:
        fail_running(storage, study, owner)
    require_a_trained_trial(out)
    return out


class DiskReserve:
    """A file of RESERVE_BYTES kept in the search directory while Tune runs, deleted when the run ends or
    fails: when the disk fills up mid-search, that space takes the study's closing writes (no trial left
    RUNNING) and the directory's signature."""

    RESERVE_BYTES = 4 << 20

    def __init__(self, out: Path):
        self.path = Path(out) / ".himari-reserve"
        try:
            with self.path.open("wb") as f:
                f.truncate(0)
                f.write(b"\0" * self.RESERVE_BYTES)  # real blocks, not a sparse file
        except OSError:
            self.release()

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def require_a_trained_trial(out: Path) -> None:
    """Exit non-zero, naming why, when no trial trained: every one crashed or was skipped by the preflight."""
    search = load_search_run(out)
    if any(trained(run) for run in search.trials):
        return
    crashed = [run for run in search.trials if run.error]
    if crashed:
        error = crashed[0].path / "error.txt"
        raise SearchFailed(
            f"no trial trained: {len(crashed)} of {len(search.trials)} crashed; {error}: {crashed[0].error}"
        )
    raise SearchFailed(f"no trial trained: all {len(search.trials)} were skipped by the preflight (see analyze {out})")


def resume_search(out: Path, address: str | None = None, storage_url: str | None = None) -> Path:
    """Continue a search whose driver died: finished trials stay, unfinished ones continue from their last
    checkpoint, and the total number of trials is the one first asked for. `storage_url` gives an external
    study's URL again, password included, since search.json keeps it without."""
    from ray import tune

    from himari_ray.search.study import bind_resumed_searcher, require_study

    out = Path(out).resolve()
    if not (out / SEARCH_JSON).is_file() or not (out / TUNE_DIR).is_dir() or not (out / SPACE_YAML).is_file():
        raise UserInputError(f"{out}: not a himari-ray search directory (no search.json, space.yaml and tune/)")
    manifest = SearchManifest.load(out)
    try:
        data_spec = DataSpec.model_validate(manifest.data)
    except ValueError:
        raise UserInputError(f"{out / SEARCH_JSON}: key 'data': not a valid data section") from None
    space, _ = load_space(str(out / SPACE_YAML))
    if data_spec.source == "dataset":  # a search run with --data: train on that dataset again
        space = space.model_copy(update={"data": data_spec})
    if manifest.tune_storage:
        # Its Tune state lives in the storage, written there by every node: nothing this driver signed.
        raise UserInputError(
            f"{out}: its trials live in {manifest.tune_storage}; resume reads signed state only, so add "
            f"trials to its study with a new search instead (himari-ray search {space.name} --storage <its study>)"
        )
    if not tune.Tuner.can_restore(str(out / "tune")):
        raise UserInputError(f"{out}: the search has no saved Tune state to resume from")
    if address is not None:
        check_address(address)
    plan = plan_resume(out)  # reads only: a refused resume (tampered, incomplete) changes nothing
    url = resume_storage_url(manifest.storage_url(out), storage_url)
    owner = manifest.search_id or str(out)
    if url:
        probe_study(url, space.name)  # read-only: an unreachable or wrong storage is refused before it is opened
    storage = require_study(url, space.name, flag="--resume") if url else None
    if url:
        bind_resumed_searcher(url, owner, str(out))
    start_ray(address)
    check_fits_cluster(space)
    for note in plan.apply():  # everything checked: now roll back, restore and set aside what the kill left
        print(f"himari-ray search: {note}", flush=True)
    tuner = tune.Tuner.restore(
        str(out / "tune"), trainable=_trainable(space), resume_unfinished=True, resume_errored=True
    )
    interrupt = GracefulInterrupt(str(out), resumed=plan.trial_ids)  # a Tune that restarts instead is stopped
    # The restored run config holds the first driver's callbacks (bound to its process and, for a moved
    # directory, its old path): this process's own replace them. Ray 2.60 has no public hook for this.
    printer = report_printer(total_trials=manifest.trials, iterations=manifest.iterations)
    tuner._local_tuner._run_config.callbacks = [printer, signing_callback(out), interrupt.callback()]
    return _fit(tuner, interrupt, out, storage, space.name, owner)


def resume_storage_url(kept: str | None, given: str | None) -> str | None:
    """The study URL a resume opens: the one search.json keeps, or the same one given again with its password."""
    if given is not None:
        if kept is None or redact(given) != redact(kept):
            was = "none (its study is its own study.db)" if kept is None else redact(kept)
            raise UserInputError(f"--storage {redact(given)}: not this search's study storage, which is {was}")
        return given
    if kept is not None and is_redacted(kept):
        raise UserInputError(
            f"--resume: search.json keeps the study storage without its password ({kept}); give it again with "
            "--storage URL, or leave the password out of the URL and give it the driver's way (PGPASSWORD, ~/.pgpass)"
        )
    return kept
