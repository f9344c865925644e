"""Resume never runs untrusted code: the files `--resume` would unpickle are authenticated first.

Resuming a search unpickles Tune's state (`tuner.pkl`, the searcher's state, the trials inside
`experiment_state-*.json`) and RLlib's checkpoints. Anyone who can write into a search directory could
replace one of them with a pickle that runs a command. So while a search runs, every file under `tune/`
that a resume may load is signed with HMAC-SHA256 under a per-user key kept outside the search
directory (`~/.config/himari-ray/state.key`, mode 0600, or `$HIMARI_RAY_KEY_FILE`); `--resume` verifies
every one of them before anything is loaded and refuses, naming the file, if one is unsigned or changed.

Signing happens on every Tune step and checkpoint (a `tune.Callback`), right after Tune writes its state.
A driver killed by SIGKILL can still die between a write and its signature; so each signed version of
Tune's rewritten state files is also kept as a snapshot (`.himari-signed/`), and a resume rolls such a file
back to its last signed snapshot, and moves files written after the last signature out of the way
(`.himari-quarantine/`): nothing unauthenticated is ever loaded. A file that was signed once and is never
rewritten by Tune (`tuner.pkl`, checkpoint files) but no longer matches is tampering: refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from himari_ray.types import UserInputError

#: Where the per-user signing key lives unless `$HIMARI_RAY_KEY_FILE` names another file.
DEFAULT_KEY_FILE = Path.home() / ".config" / "himari-ray" / "state.key"
#: The signature file inside a search directory.
SIGNATURE_FILE = ".himari-signature.json"
#: Signed copies of the state files Tune rewrites as it runs (relative to the search directory).
SNAPSHOT_DIR = ".himari-signed"
#: Where a resume moves files that were written after the last signature.
QUARANTINE_DIR = ".himari-quarantine"
#: Tune state files rewritten during a run (directly under tune/): rolled back, not refused, on mismatch.
#: `search_gen_state-*.json` is a cloudpickle despite its name (Tune's `_atomic_save`).
REWRITTEN = ("experiment_state-", "searcher-state-", "search_gen_state-", "basic-variant-state-")
#: Files directly under tune/ that Tune writes once, at the start: a later change is tampering.
WRITTEN_ONCE = ("tuner.pkl", ".validate_storage_marker")
#: Files Tune writes that a resume only parses as plain text or JSON, never unpickles; left unsigned
#: because the driver appends to them continuously.
_PLAIN_DATA = ("result.json", "progress.csv", "error.txt")


def key_file() -> Path:
    return Path(os.environ.get("HIMARI_RAY_KEY_FILE", DEFAULT_KEY_FILE)).expanduser()


def signing_key(create: bool) -> bytes | None:
    """The user's key; created (0600, in a 0700 directory) when `create` and absent."""
    path = key_file()
    if path.is_file():
        return bytes.fromhex(path.read_text().strip())
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def _needs_signature(rel: Path) -> bool:
    return rel.name not in _PLAIN_DATA and not rel.name.startswith("events.out.tfevents")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _mac(key: bytes, rel: str, digest: str) -> str:
    return hmac.new(key, f"{rel}\0{digest}".encode(), hashlib.sha256).hexdigest()


class DirectorySigner:
    """Signs the loadable files under `out/tune`; re-hashes only files whose size or mtime changed."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.key = signing_key(create=True)
        self._cache: dict[str, tuple[int, int, str]] = {}
        self._top: dict[str, tuple[int, int]] = {}
        self._files: dict[str, str] = {}  # the last signature written: relative path -> MAC

    def __reduce__(self) -> tuple:
        # Tune pickles its callbacks into tune/tuner.pkl: the key must never travel with them into the
        # directory it protects. Unpickled, a signer reads the key from the user's key file again.
        return (DirectorySigner, (self.out,))

    def _snapshot(self, path: Path, digest: str) -> tuple[Path, str] | None:
        """Keep the signed version of a rewritten state file: the snapshot and its digest (the previous
        snapshot if Tune rewrote the file while it was being copied; None if there is none yet).

        Each version gets its own name (`<file>.<digest prefix>`) and older ones are deleted only after the
        new signature is written, so a driver killed at any instant leaves a snapshot its signature names."""
        snap_dir = self.out / SNAPSHOT_DIR
        snap_dir.mkdir(exist_ok=True)
        snap = snap_dir / f"{path.name}.{digest[:16]}"
        previous = self._cache.get(f"snap:{path.name}")
        if snap.is_file() and previous is not None and previous[2] == digest:
            return snap, digest
        tmp = snap_dir / f".{path.name}.tmp"
        shutil.copyfile(path, tmp)
        if _sha256(tmp) != digest:  # rewritten under us: keep the last good snapshot, sign the new one next step
            tmp.unlink()
            if previous is None:
                return None
            return snap_dir / f"{path.name}.{previous[2][:16]}", previous[2]
        os.replace(tmp, snap)
        self._cache[f"snap:{path.name}"] = (0, 0, digest)
        return snap, digest

    def _prune_snapshots(self, files: dict[str, str]) -> None:
        """Delete the snapshots the signature just written no longer names (called after writing it)."""
        snap_dir = self.out / SNAPSHOT_DIR
        if not snap_dir.is_dir():
            return
        for snap in snap_dir.iterdir():
            if snap.is_file() and not snap.name.startswith(".") and snap.relative_to(self.out).as_posix() not in files:
                snap.unlink(missing_ok=True)

    def sign_if_state_changed(self) -> None:
        """Sign when a file directly under tune/ (Tune's experiment and searcher state) changed: a few
        stat calls per step instead of a walk over every trial directory."""
        root = self.out / "tune"
        top = {}
        if root.is_dir():
            for path in root.iterdir():
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                if path.is_file():
                    top[path.name] = (st.st_size, st.st_mtime_ns)
        if top != self._top:
            self._top = top
            self.sign(top_level_only=bool(self._files))

    def sign(self, top_level_only: bool = False) -> None:
        """Sign the loadable files under tune/: all of them (a walk over every trial directory), or, with
        `top_level_only`, just Tune's state files directly under tune/ (Tune rewrites those every step; trial
        checkpoints are signed as they arrive, by `on_checkpoint`)."""
        root = self.out / "tune"
        if top_level_only:
            files = {k: v for k, v in self._files.items() if Path(k).parent.name not in ("tune", SNAPSHOT_DIR)}
            paths = sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else []
        else:
            files = {}
            paths = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
        for path in paths:
            rel = path.relative_to(self.out)
            if not _needs_signature(rel):
                continue
            try:
                st = path.stat()
                cached = self._cache.get(str(rel))
                if cached is None or cached[:2] != (st.st_size, st.st_mtime_ns):
                    cached = (st.st_size, st.st_mtime_ns, _sha256(path))
                    self._cache[str(rel)] = cached
            except FileNotFoundError:  # Tune replaced or pruned it while we walked
                continue
            files[rel.as_posix()] = _mac(self.key, rel.as_posix(), cached[2])
            if path.parent == root and path.name.startswith(REWRITTEN):
                kept = self._snapshot(path, cached[2])
                if kept is not None:
                    snap_rel = kept[0].relative_to(self.out).as_posix()
                    files[snap_rel] = _mac(self.key, snap_rel, kept[1])
        self._files = files
        tmp = self.out / f"{SIGNATURE_FILE}.tmp"
        tmp.write_text(json.dumps({"version": 1, "files": files}, indent=0))
        os.replace(tmp, self.out / SIGNATURE_FILE)  # atomic: a reader sees the old or the new signature
        self._prune_snapshots(files)


def verify_directory(out: Path) -> list[str]:
    """Make `out/tune` hold only files carrying this user's valid signature before anything is loaded:
    rewritten state files not matching are rolled back to their signed snapshot, files written after the
    last signature are quarantined, and a signed file that changed otherwise is refused (one line naming
    it). Returns one note per file rolled back or quarantined. Files signed and later deleted (pruned
    checkpoints) are not loaded: fine."""
    out = Path(out)
    sig_path = out / SIGNATURE_FILE
    key = signing_key(create=False)
    if key is None:
        raise UserInputError(f"{key_file()}: no signing key; this search was not started by this user here")
    try:
        signed = json.loads(sig_path.read_text())["files"]
    except FileNotFoundError:
        raise UserInputError(f"{sig_path}: missing; refusing to load unauthenticated search state") from None
    except (ValueError, KeyError, TypeError):
        raise UserInputError(f"{sig_path}: unreadable; refusing to load unauthenticated search state") from None
    notes: list[str] = []

    def valid(rel: str, path: Path) -> bool:
        expected = signed.get(rel)
        return expected is not None and hmac.compare_digest(expected, _mac(key, rel, _sha256(path)))

    for path in sorted(p for p in (out / "tune").rglob("*") if p.is_file()):
        rel = path.relative_to(out).as_posix()
        if not _needs_signature(Path(rel)) or valid(rel, path):
            continue
        rewritten = path.parent == out / "tune" and path.name.startswith(REWRITTEN)
        # Its signed snapshot: `<file>.<digest prefix>` (searches signed before that kept `<file>`).
        snaps = [
            out / r
            for r in signed
            if r == f"{SNAPSHOT_DIR}/{path.name}" or r.startswith(f"{SNAPSHOT_DIR}/{path.name}.")
        ]
        snap = next((p for p in snaps if p.is_file() and valid(p.relative_to(out).as_posix(), p)), None)
        if rewritten and snap is not None:
            shutil.copyfile(snap, path)
            notes.append(f"{rel}: written after the last signature; rolled back to its signed copy")
        elif rel in signed and not rewritten:
            raise UserInputError(f"{path}: changed since the search signed it; refusing to load it (it could run code)")
        elif rel not in signed and (rewritten or path.parent != out / "tune"):
            # Written after the last signature (a driver killed mid-write): kept, but where nothing loads it.
            dest = out / QUARANTINE_DIR / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
            notes.append(f"{rel}: not signed (written after the last signature); moved to {QUARANTINE_DIR}/")
        else:
            raise UserInputError(f"{path}: not signed by this search; refusing to load it (it could run code)")
    return notes


def signing_callback(out: Path) -> Any:
    """A Tune callback that keeps `out`'s signature current: after each step (Tune saves its experiment
    state at the end of a step) and each trial checkpoint, and at the end."""
    from ray import tune

    signer = DirectorySigner(out)

    class Signer(tune.Callback):
        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            signer.sign_if_state_changed()

        def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
            signer.sign()

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            signer.sign()

    return Signer()
