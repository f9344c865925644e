"""What `--resume` checks, and what it repairs, before Tune loads anything (see `integrity.py`).

`plan_resume` reads only: it authenticates every file a resume may load, works out what a SIGKILL left
half-done (a state file mid-copy, a trial's params cut short, a checkpoint Tune deleted after the last
signature, a trial directory the signed state does not know, a results file ending in a partial line) and
refuses, in one line, anything it cannot trust or repair. Nothing is changed until every check has passed
(`ResumePlan.apply`), so a refused resume leaves the directory exactly as it was.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from himari_ray.search.signed_files import (
    CHECKPOINT,
    LINE_FILES,
    LINKS_DIR,
    ONCE,
    PLAIN,
    QUARANTINE_DIR,
    SIGNATURE_FILE,
    SNAPSHOT_DIR,
    STATE,
    SYNC,
    checkpoint_dir,
    complete,
    file_sha256,
    key_file,
    kind,
    mac,
    mentions,
    read_signature,
    signing_key,
    tune_rel,
)
from himari_ray.types import UserInputError

_DIGEST_SUFFIX = re.compile(r"\.[0-9a-f]{16}$")
LATE = "not signed (written after the last signature)"


@dataclass
class _Step:
    op: str  # "copy" (source over target), "move" (source to target), "trim" (target to `size` bytes)
    source: Path | None
    target: Path
    note: str
    size: int = 0


@dataclass
class ResumePlan:
    """What a resume will roll back, restore and move aside, and the trials Tune's signed state holds."""

    out: Path
    steps: list[_Step] = field(default_factory=list)
    trial_ids: frozenset[str] = frozenset()

    def copy(self, source: Path, target: Path, note: str) -> None:
        self.steps.append(_Step("copy", source, target, note))

    def move(self, source: Path, target: Path, note: str) -> None:
        self.steps.append(_Step("move", source, target, note))

    def aside(self, rel: Path, why: str) -> None:
        """Move tune/<rel> to the quarantine, where nothing loads it but nothing is lost."""
        self.move(
            self.out / "tune" / rel,
            self.out / QUARANTINE_DIR / "tune" / rel,
            f"tune/{rel}: {why}; moved to {QUARANTINE_DIR}/",
        )

    def apply(self) -> list[str]:
        """Carry the plan out; one note per change. Copies land by rename, so a kill here is harmless."""
        for step in self.steps:
            target = step.target
            if step.op == "copy":
                tmp = target.with_name(f".{target.name}.himari-tmp")
                shutil.copyfile(step.source, tmp)
                os.replace(tmp, target)
            elif step.op == "move":
                target = _free(target)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(step.source, target)
            else:
                with target.open("r+b") as f:
                    f.truncate(step.size)
        return [step.note for step in self.steps]


def _free(path: Path) -> Path:
    """`path`, or `path.<n>` where an earlier resume already moved something of that name aside."""
    n, free = 1, path
    while free.exists():
        free, n = path.with_name(f"{path.name}.{n}"), n + 1
    return free


def verify_directory(out: Path) -> list[str]:
    """Check `out` and, all checks passed, repair it (`plan_resume`, then `apply`); one note per change."""
    return plan_resume(out).apply()


def plan_resume(out: Path) -> ResumePlan:
    """Authenticate everything under `out/tune` that a resume may load, and plan the repairs a kill made
    necessary; writes nothing. Raises `UserInputError` (one line naming the file) on a file that is
    unsigned where it must be signed, changed since it was signed, or whose last signed copy is incomplete."""
    out = Path(out)
    tune = out / "tune"
    key = signing_key(create=False)
    if key is None:
        raise UserInputError(f"{key_file()}: no signing key; this search was not started by this user here")
    sig_path = out / SIGNATURE_FILE
    try:
        signed = read_signature(out)
    except (ValueError, KeyError, TypeError):
        raise UserInputError(f"{sig_path}: unreadable; refusing to load unauthenticated search state") from None
    if signed is None:
        raise UserInputError(f"{sig_path}: missing; refusing to load unauthenticated search state")
    plan = ResumePlan(out)
    copies: dict[str, list[Path]] = {}  # a file's signed snapshots by its path under tune/
    for r in signed:
        if r.startswith(f"{SNAPSHOT_DIR}/") and not r.startswith(f"{SNAPSHOT_DIR}/{LINKS_DIR}/"):
            copies.setdefault(_DIGEST_SUFFIX.sub("", r.removeprefix(f"{SNAPSHOT_DIR}/")), []).append(out / r)

    def valid(rel: str, path: Path) -> bool:
        expected = signed.get(rel)
        return expected is not None and hmac.compare_digest(expected, mac(key, rel, file_sha256(path)))

    def signed_copy(rel: Path) -> Path | None:
        found = (p for p in copies.get(rel.as_posix(), []) if p.is_file() and valid(p.relative_to(out).as_posix(), p))
        return next(found, None)

    def changed(path: Path) -> UserInputError:
        return UserInputError(f"{path}: changed since the search signed it; refusing to load it (it could run code)")

    # Tune's own files, directly under tune/: what Tune will read is the file itself or its signed copy.
    effective: dict[str, Path] = {}
    for path in _files(tune):
        rel, what = Path(path.name), kind(Path(path.name))
        name = path.name
        if what == PLAIN or valid(tune_rel(rel), path):
            effective[name] = path
            continue
        snap = signed_copy(rel)
        if what == STATE and snap is not None:
            plan.copy(snap, path, f"tune/{name}: written after the last signature; rolled back to its signed copy")
            effective[name] = snap
        elif what == SYNC and snap is not None and tune_rel(rel) in signed and _cut_short(path, snap):
            plan.copy(snap, path, f"tune/{name}: cut short by the kill; restored from its signed copy")
            effective[name] = snap
        elif tune_rel(rel) in signed:
            raise changed(path)
        elif what in (ONCE, SYNC):
            raise UserInputError(f"{path}: not signed by this search; refusing to load it (it could run code)")
        else:  # written after the last signature (a driver killed mid-write): kept, but where nothing loads it
            plan.aside(rel, LATE)
    for base in copies:  # signed state the kill kept from ever reaching tune/ (before Tune's first copy)
        if "/" not in base and kind(Path(base)) == STATE and not (tune / base).exists():
            snap = signed_copy(Path(base))
            if snap is not None:
                plan.copy(snap, tune / base, f"tune/{base}: missing; restored from its signed copy")
                effective[base] = snap
    logdirs, state = _check_state(tune, effective, plan)

    for trial in sorted(p for p in tune.iterdir() if p.is_dir()) if tune.is_dir() else []:
        if logdirs is not None and trial.name not in logdirs:
            plan.aside(
                Path(trial.name), "a trial the signed Tune state does not know (created after the last signature)"
            )
            continue
        unsigned: list[Path] = []
        signed_checkpoints: set[Path] = set()
        for path in sorted(p for p in trial.rglob("*") if p.is_file()):
            rel = path.relative_to(tune)
            what = kind(rel)
            if what == PLAIN:
                if path.name in LINE_FILES and (size := _whole_lines(path)) is not None:
                    plan.steps.append(
                        _Step("trim", None, path, f"tune/{rel}: its last line was cut short by the kill; dropped", size)
                    )
                continue
            if valid(tune_rel(rel), path):
                if what == CHECKPOINT:
                    signed_checkpoints.add(checkpoint_dir(rel))
                continue
            snap = signed_copy(rel)
            if what == SYNC and snap is not None and tune_rel(rel) in signed and _cut_short(path, snap):
                plan.copy(snap, path, f"tune/{rel}: cut short by the kill; restored from its signed copy")
            elif tune_rel(rel) in signed:
                raise changed(path)
            else:
                unsigned.append(rel)
        aside: list[Path] = []  # a checkpoint never reported (its trial was killed writing it) goes aside whole
        for rel in unsigned:
            unit = (
                checkpoint_dir(rel)
                if kind(rel) == CHECKPOINT and checkpoint_dir(rel) not in signed_checkpoints
                else rel
            )
            if unit not in aside:
                aside.append(unit)
        for rel in aside:
            plan.aside(rel, LATE)

    # Checkpoints Tune deleted after the last signature while the signed state still names them.
    links = out / SNAPSHOT_DIR / LINKS_DIR
    for kept in sorted(links.glob("*/checkpoint_*")) if state is not None else []:
        rel = kept.relative_to(links)
        if (tune / rel).exists() or (logdirs is not None and rel.parts[0] not in logdirs) or not mentions(state, rel):
            continue
        for f in (p for p in kept.rglob("*") if p.is_file()):
            if not valid(tune_rel(f.relative_to(links)), f):
                raise changed(f)
        plan.move(
            kept,
            tune / rel,
            f"tune/{rel}: deleted by Tune after the last signature names it; restored from its signed links",
        )
    return plan


def _check_state(tune: Path, effective: dict[str, Path], plan: ResumePlan) -> tuple[set[str] | None, bytes | None]:
    """Refuse when a state file Tune will load (the newest of each kind) is incomplete: Tune would restart
    the whole search instead (every trial again, under new numbers). Returns the trial directories and
    the bytes of the experiment state Tune will load (None where there is none, or not in Tune's layout),
    and records its trial ids in `plan`."""
    newest: dict[str, str] = {}
    for name in effective:
        if kind(Path(name)) == STATE:
            prefix = name.split("-", 1)[0]
            newest[prefix] = max(newest.get(prefix, name), name)
    state = None
    for prefix, name in newest.items():
        data = effective[name].read_bytes()
        if not complete(name, data):
            raise UserInputError(
                f"{tune / name}: its last signed version is incomplete (cut short while it was written); "
                "this search cannot resume from it"
            )
        if prefix == "experiment_state":
            state = data
    if state is None:
        return None, None
    try:
        trials = [json.loads(t) for t, _ in json.loads(state)["trial_data"]]
        logdirs = {t["relative_logdir"] for t in trials}
        plan.trial_ids = frozenset(t["trial_id"] for t in trials)
    except (ValueError, KeyError, TypeError):  # not the layout of Ray 2.60: nothing to compare against
        return None, state
    return logdirs, state


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def _cut_short(path: Path, snap: Path) -> bool:
    """Whether `path` is a strict prefix of its signed copy: what an interrupted copy of the same content
    leaves (Tune's sync opens, truncates, writes). Anything else is a change, refused."""
    data, full = path.read_bytes(), snap.read_bytes()
    return len(data) < len(full) and full.startswith(data)


def _whole_lines(path: Path) -> int | None:
    """The length of `path` without a partial last line, or None when it ends with a whole line (or is
    empty). Tune restores such a file and appends to it: a partial line would swallow the next report."""
    size = path.stat().st_size
    if size == 0:
        return None
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return None
    data = path.read_bytes()
    return data.rfind(b"\n") + 1
