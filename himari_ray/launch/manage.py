"""`himari-ray vast status|logs|pull|down` on a launch directory (the --out of `vast up`)."""

from __future__ import annotations

from pathlib import Path

from himari_ray.launch.box import BOX_DIR
from himari_ray.launch.instances import (
    CONSOLE,
    DEAD,
    Connect,
    Echo,
    box_phase,
    destroy_all,
    pull_box,
    ssh_connect,
    study_counts,
)
from himari_ray.launch.ledger import Ledger
from himari_ray.launch.state import LaunchState
from himari_ray.launch.vast import VastClient, VastError
from himari_ray.report.cost import cost_report
from himari_ray.types import UserInputError, is_redacted


def _listed(client: VastClient) -> dict[int, dict]:
    try:
        return {i["id"]: i for i in client.instances()}
    except VastError as exc:
        raise UserInputError(f"Vast instances: {exc}") from None


def status(out: Path, client: VastClient, connect: Connect = ssh_connect, echo: Echo = print) -> int:
    """Each instance's Vast state, on-start phase and uptime; the study's progress; the cost so far."""
    state = LaunchState.load(out)
    destroyed = Ledger(out).destroyed()  # checked before Vast is asked anything
    listed = _listed(client)
    echo(f"{'instance':>10} {'label':20} {'gpu':16} {'$/h':>6} {'vast':>10}  {'phase':12} ssh")
    for iid, info in sorted(state.instances.items()):
        inst = listed.get(iid)
        vast = "destroyed" if iid in destroyed or inst is None else str(inst.get("actual_status") or "provisioning")
        phase = box_phase(connect(inst)) if inst is not None and vast == "running" else ""
        gpu = f"{info['num_gpus']}x {info['gpu']}"
        ssh = (
            f"ssh -p {inst.get('ssh_port')} root@{inst.get('ssh_host')}"
            if inst is not None and vast == "running"
            else ""
        )
        echo(f"{iid:>10} {info['label']:20} {gpu:16} {float(info['dph']):6.3f} {vast:>10}  {phase:12} {ssh}")
    if state.data.get("storage") and is_redacted(state.data["storage"]):
        echo(f"study: not counted ({state.data['storage']}: its password is not kept on disk)")
    elif state.data.get("storage"):
        from himari_ray.search.study import open_storage

        owners = {v["owner"] for v in state.instances.values() if "owner" in v}
        counts = study_counts(open_storage(state.data["storage"]), state.data["study"], owners)
        echo("study: " + (", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no trial yet"))
    if cost := cost_report(out):
        echo(cost)
    return 0


def _running(state: LaunchState, client: VastClient, instance: int | None) -> dict[int, dict]:
    if instance is not None and instance not in state.instances:
        raise UserInputError(f"--instance {instance}: not an instance of this launch ({sorted(state.instances)})")
    destroyed = Ledger(state.out).destroyed()  # checked before Vast is asked anything
    listed = _listed(client)
    wanted = [instance] if instance is not None else sorted(state.instances)
    return {
        i: listed[i]
        for i in wanted
        if i in listed and i not in destroyed and listed[i].get("actual_status") not in DEAD
    }


def logs(
    out: Path,
    client: VastClient,
    connect: Connect = ssh_connect,
    echo: Echo = print,
    instance: int | None = None,
    lines: int = 40,
) -> int:
    """The last lines of each running box's on-start and search logs."""
    state = LaunchState.load(out)
    running = _running(state, client, instance)
    if not running:
        echo("no running instance of this launch")
        return 1
    for iid, inst in running.items():
        res = connect(inst).run(
            f"cd ~/{BOX_DIR} && tail -n {int(lines)} onstart.log search.log 2>/dev/null", timeout=60
        )
        echo(f"== instance {iid} ==\n{res.stdout.rstrip()}")
    return 0


def pull(out: Path, client: VastClient, connect: Connect = ssh_connect, echo: Echo = print) -> int:
    """Copy each running box's search directory into <out>/boxes/<label>/ (`analyze` reads it)."""
    state = LaunchState.load(out)
    running = _running(state, client, None)
    if not running:
        echo("no running instance of this launch")
        return 1
    for iid, inst in running.items():
        dest = pull_box(connect(inst), state, iid)
        echo(f"instance {iid}: pulled into {dest}")
    return 0


def down(out: Path, client: VastClient, echo: Echo = print) -> int:
    """Destroy every instance of the launch; 1 if any could not be destroyed. A launch.json or ledger that
    cannot be read is refused before anything is destroyed (the line says where to destroy by hand)."""
    try:
        state = LaunchState.load(out)
        Ledger(out).destroyed()
    except UserInputError as exc:
        raise UserInputError(f"{exc}; nothing destroyed: fix it, or destroy at {CONSOLE}") from None
    failed = destroy_all(client, state, echo, "down")
    Ledger(out).record("down")
    if cost := cost_report(out):
        echo(cost)
    return 1 if failed else 0
