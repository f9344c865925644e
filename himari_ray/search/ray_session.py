"""Ray for one driver: a local instance of its own or a join of a token-auth cluster, quiet, and with the
driver's command line redacted where Ray keeps it. Used by `search` (new and resumed) and `confirm`."""

from __future__ import annotations

import logging
import os
import time
import warnings

from himari_ray.types import UserInputError, redact


def redact_ray_entrypoint() -> None:
    """Ray records the driver's command line (from /proc, not sys.argv) as its job's entrypoint, kept in the
    GCS, the dashboard and the session logs: a --storage password in it would be kept there. Ray 2.60 reads it
    through `ray._private.utils.get_entrypoint_name` at `ray.init`, the narrowest seam to redact it at."""
    import ray._private.utils as ray_utils

    original = ray_utils.get_entrypoint_name
    if getattr(original, "_himari_redacted", False):
        return

    def entrypoint() -> str:
        return redact(original())

    entrypoint._himari_redacted = True  # type: ignore[attr-defined]
    ray_utils.get_entrypoint_name = entrypoint


def start_ray(address: str | None) -> None:
    """Start Ray for this driver (address None: a local instance of its own) or join the cluster at `address`,
    with Tune, Ray and Optuna made quiet: the search prints one line per report instead."""
    import optuna
    import ray

    # Our one line per report replaces Tune's progress tables and Optuna's per-trial log lines; a failed trial
    # is one line naming its error.txt, not Tune's and Ray's copies of its traceback.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    # Tune saves its experiment state every few seconds by default while trials checkpoint (and prune old
    # checkpoints) every report: a driver killed in between leaves a state naming a checkpoint already
    # deleted, and that trial cannot resume. Saving every step keeps them in step (a few KB per step).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    for name in ("ray.tune", "ray.train", "ray._common.deprecation"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A resumed trial repeats the report it was interrupted at; the study keeps the first (as it should).
    warnings.filterwarnings("ignore", message="The reported value is ignored because this `step", category=UserWarning)
    if ray.is_initialized():
        return
    redact_ray_entrypoint()
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
        init_local_ray()


def init_local_ray(**resources: float) -> None:
    """`ray.init` of a new local instance of our own (`resources`: num_cpus, num_gpus, to override what the
    machine has), retried when Ray's start-up times out. Without an address Ray joins the last cluster anyone
    on this machine started with `ray start` (/tmp/ray/ray_current_cluster), and hangs when that one is gone."""
    import ray

    for attempt in range(3):
        try:
            ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR", **resources)
            return
        except Exception as exc:  # Ray raises a bare Exception when its raylet is late
            # Two drivers starting Ray on one busy machine at the same moment: the GCS is slow to come up,
            # or the raylet misses Ray's fixed 30 s registration wait. A fresh start usually succeeds.
            if not isinstance(exc, RuntimeError) and "timed out during startup" not in str(exc):
                raise
            ray.shutdown()
            if attempt == 2:
                raise
            time.sleep(2.0 + 3.0 * attempt)
