"""Validate before anything starts: what would make every trial crash is found in the driver, in seconds,
before the output directory exists, and said in one line.

A search whose trials all died (a missing data path, `d_model` not divisible by `n_heads`, a context longer
than the data, a regime id the model has no embedding for) used to print tracebacks and exit 0; an
unreachable `--address` hung without a word.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import numpy as np
import torch
from ray.rllib.core.columns import Columns

from himari_ray.data.dataset import load_dataset
from himari_ray.env.trading import HimariTradingEnv
from himari_ray.rl.config import TrialConfig, module_spec
from himari_ray.search.space import SearchSpace
from himari_ray.types import N_REGIMES, UserInputError

#: Seconds to wait for a TCP answer from a Ray cluster's address before saying it is unreachable.
ADDRESS_TIMEOUT_S = 5.0


def check_buildable(space: SearchSpace, space_path: Path) -> None:
    """Build the dataset, one env per split the search reads, and the module; run one forward pass."""
    trial: TrialConfig = space.trial_config()
    where = f"{space_path}"
    try:
        ds = load_dataset(trial.env.data)
    except FileNotFoundError as exc:
        raise UserInputError(f"{where}: data.path: {exc.filename}: no such dataset") from None
    for split in ("train", "val"):
        arrays = ds.split(split)
        bad = arrays.regime_ids[(arrays.regime_ids < 0) | (arrays.regime_ids >= N_REGIMES)]
        if bad.size:
            raise UserInputError(f"{where}: data: {split} split has regime id {int(bad[0])}; ids must be 0..3")
        if len(arrays) <= trial.env.context_len + 1:
            raise UserInputError(
                f"{where}: env.context_len: {trial.env.context_len} needs more than the {len(arrays)} bars "
                f"of the {split} split"
            )
    try:
        env = HimariTradingEnv(trial.env, dataset=ds)
    except ValueError as exc:
        raise UserInputError(f"{where}: env: {exc}") from None
    # RLlib 2.60 warns that RLModuleConfig is deprecated whenever any module is built: not the user's concern.
    logging.getLogger("ray._common.deprecation").setLevel(logging.ERROR)
    module = module_spec(trial, env).build()
    obs, _ = env.reset(seed=0)
    batch = {k: torch.as_tensor(np.array(v))[None] for k, v in obs.items()}
    with torch.no_grad():
        logits = module.forward_inference({Columns.OBS: batch})[Columns.ACTION_DIST_INPUTS]
    if not torch.isfinite(logits).all():
        raise UserInputError(f"{where}: the untrained model gives non-finite outputs on the first observation")


def check_address(address: str) -> None:
    """`auto` needs a cluster started on this machine; host:port must answer TCP within seconds."""
    if address == "auto":
        if os.environ.get("RAY_ADDRESS"):
            address = os.environ["RAY_ADDRESS"]
        elif not Path("/tmp/ray/ray_current_cluster").is_file():
            raise UserInputError("--address auto: no Ray cluster was started on this machine (ray start --head)")
        else:
            address = Path("/tmp/ray/ray_current_cluster").read_text().strip()
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise UserInputError(f"--address {address}: expected host:port (or auto)")
    try:
        with socket.create_connection((host, int(port)), timeout=ADDRESS_TIMEOUT_S):
            pass
    except OSError as exc:
        raise UserInputError(f"--address {address}: unreachable ({exc.strerror or exc})") from None
