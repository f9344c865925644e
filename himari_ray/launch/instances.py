"""One launch's rented instances: connecting to a box, reading its on-start phase, counting its trials in the
study, pulling its results and destroying it (each destruction in the ledger). Shared by `up`, which watches
them, and by `status`, `logs`, `pull` and `down`."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from himari_ray.launch.box import BOX_DIR, Box, SSHBox
from himari_ray.launch.ledger import Ledger
from himari_ray.launch.onstart import run_dir
from himari_ray.launch.state import LaunchState
from himari_ray.launch.vast import VastClient, VastError
from himari_ray.types import quote

#: Where a user destroys instances by hand.
CONSOLE = "https://cloud.vast.ai/instances/"
#: Vast states of an instance that will not run again.
DEAD = ("exited", "offline", "stopped", "destroyed")

Echo = Callable[[str], None]
Connect = Callable[[dict[str, Any]], Box]


def ssh_connect(instance: dict[str, Any]) -> Box:
    host, port = instance.get("ssh_host"), instance.get("ssh_port")
    if not isinstance(host, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.:-]*", host):
        raise VastError(f"instance {instance.get('id')}: Vast lists no SSH host for it ({quote(host, 40)})")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise VastError(f"instance {instance.get('id')}: Vast lists no SSH port for it ({quote(port, 40)})")
    return SSHBox(host, port)


def is_ours(instance: dict[str, Any], label: str) -> bool:
    """Whether a listed instance is one this launch created: labelled `<label>-<n>` (`himari-ab-0` is not
    `himari-a`'s)."""
    return re.fullmatch(rf"{re.escape(label)}-\d+", str(instance.get("label", ""))) is not None


def destroy_all(client: VastClient, state: LaunchState, echo: Echo, reason: str) -> list[int]:
    """Destroy every instance of this launch not yet destroyed; returns those that could not be."""
    ledger = Ledger(state.out)
    done = ledger.destroyed()
    prefix = state.data["label"]
    ours = set(state.instances) - done
    with contextlib.suppress(VastError):  # also any instance with our label launch.json missed (created as we died)
        ours |= {i["id"] for i in client.instances() if is_ours(i, prefix)} - done
    failed = []
    for iid in sorted(ours):
        try:
            client.destroy(iid)
            ledger.record("destroyed", iid, reason=reason)
            echo(f"instance {iid}: destroyed ({reason})")
        except VastError as exc:
            failed.append(iid)
            echo(f"instance {iid}: could NOT be destroyed ({exc}); destroy it at {CONSOLE}")
    return failed


def box_phase(box: Box) -> str:
    res = box.run(f"cat ~/{BOX_DIR}/phase 2>/dev/null", timeout=30)
    return res.stdout.strip() if res.returncode == 0 else ""


def last_log_line(box: Box) -> str:
    res = box.run(f"tail -n 1 ~/{BOX_DIR}/onstart.log 2>/dev/null", timeout=30)
    return res.stdout.strip()[-200:]


def study_counts(storage: Any, study_name: str, owners: set[str]) -> dict[str, int]:
    import optuna

    from himari_ray.search.study import OUT_DIR_ATTR, OWNER_ATTR

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return {}
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get(OUT_DIR_ATTR) in owners or t.user_attrs.get(OWNER_ATTR) in owners:
            counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return counts


def pull_box(box: Box, state: LaunchState, iid: int) -> Path:
    label = state.instances[iid]["label"]
    dest = state.out / "boxes" / label
    box.pull(run_dir(label), dest)
    return dest


def destroy_one(client: VastClient, state: LaunchState, iid: int, reason: str, echo: Echo) -> None:
    try:
        client.destroy(iid)
        Ledger(state.out).record("destroyed", iid, reason=reason)
        echo(f"instance {iid}: destroyed ({reason})")
    except VastError as exc:
        echo(f"instance {iid}: could NOT be destroyed ({exc}); `himari-ray vast down {state.out}` retries")
