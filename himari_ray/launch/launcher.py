"""`himari-ray vast up|status|logs|pull|down`: rent N Vast instances, run one search on each into the user's
study, watch them, bring the results home, and destroy them.

Vast instances are containers behind NAT, so one Ray cluster across them does not work: each instance runs
its own single-node Ray (token authentication, dashboard on loopback) and its own search, and the searches
share one Optuna study. The study stays on this machine behind Optuna's gRPC proxy on 127.0.0.1; each box
reaches it through an SSH reverse tunnel, so no database or proxy port is ever public.

`up` runs in the foreground until every search ends. Whatever it rented is destroyed when it ends, on
success (after pulling the results; `--keep` leaves them for `status/logs/pull/down`) and on any failure or
Ctrl-C: nothing is left billing. `down <out>` destroys what an `up` killed outright left behind.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from himari_ray import __version__
from himari_ray.launch.box import Box, Tunnel
from himari_ray.launch.instances import (
    DEAD,
    Connect,
    Echo,
    box_phase,
    destroy_all,
    destroy_one,
    is_ours,
    last_log_line,
    pull_box,
    ssh_connect,
    study_counts,
)
from himari_ray.launch.ledger import Ledger
from himari_ray.launch.offers import OfferFilter, matches, usable_offers, vast_query
from himari_ray.launch.onstart import onstart_script, run_dir
from himari_ray.launch.state import LaunchState
from himari_ray.launch.vast import VastClient, VastError
from himari_ray.report.cost import cost_report
from himari_ray.types import UserInputError, redact

#: Consecutive failed Vast API calls a running launch sits out before it gives up (and destroys all).
MAX_API_FAILURES = 30


class LaunchConfig(BaseModel):
    """What `up` rents and runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    space: str = Field(description="Space file or bundled name every box searches.")
    instances: int = Field(1, ge=1, description="How many instances to rent (one search each).")
    trials: int = Field(ge=1, description="Trials over all instances (split evenly).")
    seed: int = Field(0, ge=0, description="Sampler seed of the first box; box i uses seed + i.")
    storage: str = Field(description="The study's storage on this machine (SQLAlchemy URL).")
    image: str = Field("pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime", description="Docker image of each box.")
    install: str = Field(
        f"pip install -q 'himari-ray=={__version__}'",
        description="Shell command installing himari-ray on each box (default: this version, from PyPI).",
    )
    ready_timeout_s: float = Field(900.0, gt=0, description="Seconds a box may take to be ready.")
    poll_s: float = Field(10.0, gt=0, description="Seconds between checks of the boxes.")
    box_proxy_port: int = Field(13000, ge=1024, le=65535, description="Port of the study proxy on each box.")
    ray_port: int = Field(6379, ge=1024, le=65535, description="Ray's GCS port on each box (loopback use only).")
    keep: bool = Field(False, description="Leave the instances running when the searches end.")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_offers(client: VastClient, f: OfferFilter) -> tuple[list[dict[str, Any]], str]:
    """Offers matching `f`, cheapest first, and a note on those Vast returned that could not be checked
    ("" when none). When Vast returned offers and not one could be checked, a `VastError` says why."""
    returned = client.search_offers(vast_query(f))
    usable, note = usable_offers(returned, f)
    if returned and not usable:
        raise VastError(f"GET /bundles/: no offer can be checked against the filter ({note})")
    return sorted((o for o in usable if matches(o, f)), key=lambda o: float(o["dph_total"])), note


def _wait_ready(
    client: VastClient,
    state: LaunchState,
    connect: Connect,
    cfg: LaunchConfig,
    echo: Echo,
    on_ready: Callable[[Box], None],
) -> dict[int, Box]:
    ledger = Ledger(state.out)
    pending = dict(state.instances)
    boxes: dict[int, Box] = {}
    last: dict[int, str] = {}
    deadline = time.monotonic() + cfg.ready_timeout_s
    while pending:
        listed = {int(i["id"]): i for i in client.instances()}
        for iid in list(pending):
            inst = listed.get(iid)
            status = (inst or {}).get("actual_status") or "provisioning"
            if inst is None or status in DEAD:
                raise UserInputError(
                    f"instance {iid} stopped while starting (Vast status {status}); all instances destroyed; "
                    "try another offer (--filter reliability>=0.99)"
                )
            phase = ""
            if status == "running":
                try:
                    box = connect(inst)
                except VastError:  # running before Vast has mapped its SSH port: not ready yet
                    last[iid] = f"Vast status {status}, no SSH address listed yet"
                    continue
                phase = box_phase(box)
                if phase.startswith("failed"):
                    raise UserInputError(
                        f"instance {iid}: on-start {phase} ({last_log_line(box)}); all instances destroyed; "
                        "check --install and --image"
                    )
                if phase in ("ready", "searching") or phase.startswith("done"):
                    home = box.run("cd ~ && pwd -P", timeout=30).stdout.strip()  # as the search resolves it
                    state.data["instances"][str(iid)]["owner"] = f"{home}/{run_dir(pending[iid]['label'])}"
                    state.save()
                    ledger.record("ready", iid)
                    echo(f"instance {iid}: ready ({box.name})")
                    on_ready(box)
                    boxes[iid] = box
                    del pending[iid]
                    continue
            last[iid] = f"Vast status {status}" + (f", on-start phase {phase}" if phase else "")
        if pending and time.monotonic() > deadline:
            iid = next(iter(pending))
            raise UserInputError(
                f"instance {iid} not ready after {cfg.ready_timeout_s:.0f} s ({last.get(iid, 'no status')}); "
                "all instances destroyed; raise --ready-timeout or pick another offer (--filter)"
            )
        if pending:
            time.sleep(min(cfg.poll_s, max(deadline - time.monotonic(), 0.1)))
    return boxes


def _monitor(
    client: VastClient, state: LaunchState, boxes: dict[int, Box], storage: Any, cfg: LaunchConfig, echo: Echo
) -> tuple[dict[int, int], list[int]]:
    """Watch until every search ends; returns exit codes of finished boxes and the ids of lost ones."""
    from himari_ray.search.study import fail_running

    active, codes, lost = dict(boxes), {}, []
    owners = {v["owner"] for v in state.instances.values() if "owner" in v}
    shown: dict[str, int] = {}
    blips = 0
    while active:
        time.sleep(cfg.poll_s)
        try:
            listed = {int(i["id"]): i for i in client.instances()}
            blips = 0
        except VastError as exc:  # the API hiccups for minutes at times; the boxes keep searching meanwhile
            blips += 1
            if blips >= MAX_API_FAILURES:
                raise
            echo(f"Vast API: {exc} (try {blips} of {MAX_API_FAILURES})")
            continue
        for iid, box in list(active.items()):
            status = (listed.get(iid) or {}).get("actual_status") or "gone"
            if status in DEAD or status == "gone":
                echo(f"instance {iid}: lost mid-search (Vast status {status}); destroying it, the others go on")
                n = fail_running(storage, state.data["study"], state.instances[iid].get("owner", ""))
                if n:
                    echo(f"instance {iid}: {n} trial(s) it was running marked FAIL in the study")
                lost.append(iid)
                del active[iid]
                destroy_one(client, state, iid, "lost", echo)
                continue
            phase = box_phase(box)
            if phase.startswith("done"):
                codes[iid] = int(phase.split()[1])
                dest = pull_box(box, state, iid)
                echo(f"instance {iid}: search ended (exit {codes[iid]}); results in {dest}")
                del active[iid]
                if not cfg.keep:
                    destroy_one(client, state, iid, "finished", echo)
        counts = study_counts(storage, state.data["study"], owners)
        if counts != shown:
            shown = counts
            echo("study: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return codes, lost


#: What a failed launch's one line says of its instances; where some could not be destroyed it says which.
ALL_DESTROYED = "all instances destroyed"


def _first_missing(path: Path) -> Path | None:
    """The topmost directory of `path` that does not exist yet (what `mkdir(parents=True)` creates), or None."""
    path = path.absolute()
    if os.path.lexists(path):
        return None
    while not os.path.lexists(path.parent):
        path = path.parent
    return path


def _restore(out: Path, made: Path | None) -> None:
    """Leave --out as `up` found it: the directories it made removed, or the empty one it was given emptied
    (check_out_dir let only a new or empty directory through, so everything in it is this launch's)."""
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)
        return
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _left_billing(client: VastClient, state: LaunchState) -> list[int] | None:
    """This launch's instances Vast still lists and the ledger does not say destroyed; None when Vast cannot
    be asked (then nobody knows, and launch.json must stay for `vast down`)."""
    try:
        listed = client.instances()
    except VastError:
        return None
    done = Ledger(state.out).destroyed()
    return sorted(i["id"] for i in listed if is_ours(i, state.data["label"]) and i["id"] not in done)


def up(
    cfg: LaunchConfig, f: OfferFilter, out: Path, client: VastClient, connect: Connect = ssh_connect, echo: Echo = print
) -> int:
    """Rent, run, watch, pull, destroy. Everything is checked before anything is rented.

    A launch that fails before any box is ready (no offer, a refused creation, a box that never starts,
    Ctrl-C) destroys what it rented, prints the cost, and leaves --out as it found it: the directory removed
    if `up` made it, emptied if it was given an empty one; a rerun with the same --out then works. Where an
    instance could not be destroyed (or Vast cannot say), launch.json and the ledger stay for `vast down`.
    Once a box is ready it may have searched, and everything stays."""
    from himari_ray.launch.proxy import StudyProxy
    from himari_ray.search.driver import check_out_dir
    from himari_ray.search.sampling import objective_spec, optuna_distributions
    from himari_ray.search.space import load_space
    from himari_ray.search.storage import probe_new_storage
    from himari_ray.search.study import check_compatible, open_storage

    space, path = load_space(cfg.space)
    if cfg.trials < cfg.instances:
        raise UserInputError(f"--trials {cfg.trials} < --instances {cfg.instances}: each instance needs a trial")
    if space.scheduler.kind != "asha":
        raise UserInputError(f"{path}: scheduler {space.scheduler.kind} keeps no shared study; use asha on Vast")
    space_text = Path(path).read_text()
    check_out_dir(out)
    probe_new_storage(cfg.storage)  # read-only: another application's database is refused before it is opened
    made = _first_missing(out)
    out.mkdir(parents=True, exist_ok=True)  # the study may live in it (the default storage)
    state: LaunchState | None = None
    try:
        storage = open_storage(cfg.storage)
        _, mode = objective_spec(space)
        check_compatible(storage, space.name, optuna_distributions(space), mode if isinstance(mode, list) else [mode])
        proxy = StudyProxy(cfg.storage, port=_free_port())  # built (grpcio there) before renting; started later
        try:
            offers, note = find_offers(client, f)
        except VastError as exc:
            raise UserInputError(f"Vast offers: {exc}") from None
        if note:
            echo(note)
        if len(offers) < cfg.instances:
            raise UserInputError(
                f"no offers: {len(offers)} match the filter, {cfg.instances} needed; widen it (higher dph<=, lower "
                "reliability>=, another gpu) and check with `himari-ray vast offers`" + (f" ({note})" if note else "")
            )
        label = f"himari-{secrets.token_hex(4)}"
        state = LaunchState(out, {"label": label, "space": space.name, "study": space.name, "instances": {}})
        # launch.json is on disk: the URL without its password (`vast status` then says it cannot count the study).
        state.data["storage"] = redact(cfg.storage)
        state.save()
        try:
            codes, lost = _rent_and_watch(cfg, f, client, connect, echo, state, offers, space_text, storage, proxy)
        except VastError as exc:
            raise UserInputError(f"Vast: {exc}; {ALL_DESTROYED}") from None
    except BaseException as exc:
        if state is None:  # nothing rented: leave no directory that blocks a rerun
            _restore(out, made)
            raise
        _after_failure(exc, client, state, out, made, echo)
        raise
    if not cfg.keep:
        failed = destroy_all(client, state, echo, "search over")
        if failed:
            echo(f"{len(failed)} instance(s) may still bill: {failed}")
    if cost := cost_report(out):
        echo(cost)
    bad = [i for i, c in codes.items() if c != 0]
    if lost or bad:
        echo(f"{len(lost)} instance(s) lost, {len(bad)} search(es) failed: see `himari-ray analyze` on {out}/boxes/*")
        return 1
    return 0


def _after_failure(
    exc: BaseException, client: VastClient, state: LaunchState, out: Path, made: Path | None, echo: Echo
) -> None:
    """Destroy what a failed launch rented, and say so: restore --out where nothing ran and nothing bills; a
    `UserInputError`'s line is rewritten to name what may still bill (raised from here in its place)."""
    failed = destroy_all(client, state, echo, "launch failed")
    left = failed if failed else _left_billing(client, state)
    if cost := cost_report(out):
        echo(cost)
    searched = any("owner" in v for v in state.instances.values())
    if left == [] and not searched:
        _restore(out, made)
        echo(f"{out}: {'removed' if made is not None else 'emptied'}: nothing ran and nothing bills")
    still = (
        ALL_DESTROYED
        if left == []
        else (f"instance(s) {left} may still bill" if left else "Vast cannot say whether all instances are gone")
        + f"; `himari-ray vast down {out}` retries"
    )
    if left:
        echo(f"{len(left)} instance(s) may still bill: {left}")
    if isinstance(exc, UserInputError):
        line = str(exc)
        line = line.replace(ALL_DESTROYED, still) if ALL_DESTROYED in line else f"{line}; {still}"
        if line != str(exc):
            raise UserInputError(line) from None


def _rent_and_watch(
    cfg: LaunchConfig,
    f: OfferFilter,
    client: VastClient,
    connect: Connect,
    echo: Echo,
    state: LaunchState,
    offers: list[dict[str, Any]],
    space_text: str,
    storage: Any,
    proxy: Any,
) -> tuple[dict[int, int], list[int]]:
    """Create one instance per offer, wait for each to be ready, watch the searches to their end."""
    ledger = Ledger(state.out)
    label = state.data["label"]
    for i, offer in enumerate(offers[: cfg.instances]):
        name = f"{label}-{i}"
        script = onstart_script(
            name,
            space_text,
            cfg.trials // cfg.instances + (i < cfg.trials % cfg.instances),  # exactly --trials in all
            cfg.seed + i,
            cfg.install,
            cfg.ray_port,
            cfg.box_proxy_port,
        )
        try:
            iid = client.create_instance(offer["id"], cfg.image, f.min_disk_gb, script, name, env={})
        except VastError as exc:
            raise UserInputError(
                f"Vast refused to create an instance from offer {offer['id']} ({exc}); {ALL_DESTROYED}; "
                "offers change by the minute: run it again or widen the filter"
            ) from None
        info = {"gpu": offer["gpu_name"], "num_gpus": offer["num_gpus"], "dph": offer["dph_total"]}
        ledger.record("created", iid, offer=offer["id"], **info)
        state.data["instances"][str(iid)] = {"label": name, "offer": offer["id"], **info}
        state.save()
        echo(
            f"instance {iid}: created from offer {offer['id']} ({info['num_gpus']}x {info['gpu']}, ${float(info['dph']):.3f}/h)"
        )
    # The proxy runs before any box is ready: each box's tunnel opens the moment that box is ready.
    with proxy:
        tunnels: list[Tunnel] = []
        try:
            boxes = _wait_ready(
                client,
                state,
                connect,
                cfg,
                echo,
                lambda box: tunnels.append(box.forward(cfg.box_proxy_port, proxy.port)),
            )
            codes, lost = _monitor(client, state, boxes, storage, cfg, echo)
        finally:
            for t in tunnels:
                t.close()
    owners = {v["owner"] for v in state.instances.values() if "owner" in v}
    counts = study_counts(storage, state.data["study"], owners)
    ledger.record("trials", finished=counts.get("complete", 0) + counts.get("pruned", 0))
    return codes, lost
