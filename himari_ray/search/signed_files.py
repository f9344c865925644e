"""The files of a signed search directory: where each lives, what each kind is to signing and resume, whether
a copy of one is whole, and the per-user key and signature file that authenticate them (`integrity.py` says
why; `DirectorySigner` signs, `resume_check` verifies and repairs).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickletools
import secrets
from pathlib import Path

#: Where the per-user signing key lives unless `$HIMARI_RAY_KEY_FILE` names another file.
DEFAULT_KEY_FILE = Path.home() / ".config" / "himari-ray" / "state.key"
#: The signature file inside a search directory.
SIGNATURE_FILE = ".himari-signature.json"
#: Signed copies of the files Tune rewrites as it runs (relative to the search directory).
SNAPSHOT_DIR = ".himari-signed"
#: Inside SNAPSHOT_DIR: hard links of signed checkpoints, kept while a signed state may still name them.
LINKS_DIR = "checkpoints"
#: Where a resume moves files that were written after the last signature.
QUARANTINE_DIR = ".himari-quarantine"
#: Tune state files rewritten during a run (directly under tune/): rolled back, not refused, on mismatch.
REWRITTEN = ("experiment_state-", "searcher-state-", "search_gen_state-", "basic-variant-state-")
#: Tune's cloudpickles named .json.
PICKLED_JSON = ("search_gen_state-", "basic-variant-state-")
#: Files directly under tune/ that Tune writes once, at the start: a change is tampering.
WRITTEN_ONCE = ("tuner.pkl", ".validate_storage_marker")
#: Files Tune's sync copies over themselves unchanged (tuner.pkl on a resumed run, each trial's params):
#: a kill mid-copy leaves a strict prefix of the signed content, which a resume restores from its snapshot.
TRIAL_PARAMS = ("params.json", "params.pkl")
SYNCED = ("tuner.pkl", *TRIAL_PARAMS)
#: Files Tune writes that a resume only parses as plain text or JSON, never unpickles; left unsigned
#: because the driver appends to them continuously.
PLAIN_DATA = ("result.json", "progress.csv", "error.txt")
#: Plain files appended line by line, which a kill mid-copy can leave ending in a partial line.
LINE_FILES = ("result.json", "progress.csv")

STATE, ONCE, SYNC, CHECKPOINT, PLAIN, OTHER = "state", "once", "synced", "checkpoint", "plain", "other"


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


def kind(rel: Path) -> str:
    """What a file under tune/ (`rel`, relative to tune/) is to signing and resume."""
    name = rel.name
    if name in PLAIN_DATA or name.startswith("events.out.tfevents"):
        return PLAIN
    if len(rel.parts) == 1:
        if name.startswith(REWRITTEN):
            return STATE
        return SYNC if name in SYNCED else ONCE if name in WRITTEN_ONCE else OTHER
    if checkpoint_dir(rel) is not None:
        return CHECKPOINT
    return SYNC if name in SYNCED else OTHER


def checkpoint_dir(rel: Path) -> Path | None:
    """The trial checkpoint directory (`<trial>/checkpoint_<n>`, relative to tune/) holding `rel`, if any."""
    parts = rel.parts
    if len(parts) > 2 and parts[1].startswith("checkpoint_"):
        return Path(parts[0], parts[1])
    return None


def snapshot_rel(rel: Path, digest: str) -> str:
    """A signed version's snapshot, relative to the search directory: `.himari-signed/<rel>.<digest prefix>`."""
    return f"{SNAPSHOT_DIR}/{rel.as_posix()}.{digest[:16]}"


def tune_rel(rel: Path) -> str:
    """The signature's key of a file under tune/ (paths are relative to the search directory)."""
    return f"tune/{rel.as_posix()}"


def whole_pickle(data: bytes) -> bool:
    """Whether `data` is one complete pickle: its opcodes are read (never executed) up to a STOP that is the
    last byte. A file cut short anywhere fails: a STOP can only be read where the stream really ends."""
    last, end = None, -1
    try:
        for op, _, pos in pickletools.genops(data):
            last, end = op.name, pos
    except Exception:  # truncated: genops raises ValueError, EOFError or struct errors on a cut stream
        return False
    return last == "STOP" and end == len(data) - 1


def complete(name: str, data: bytes) -> bool:
    """Whether `data` is a whole file of its kind: JSON that parses, a pickle that reaches its STOP. Other
    kinds cannot be told from a prefix of themselves (the empty storage marker is whole as it is)."""
    if name.endswith(".pkl") or name.startswith(PICKLED_JSON):
        return whole_pickle(data)
    if name.endswith(".json"):
        try:
            json.loads(data)
        except ValueError:  # includes UnicodeDecodeError
            return False
    return True


def read_whole(path: Path) -> bytes | None:
    """The bytes of `path` if it is complete and was not being written while read, else None. Read once:
    what is hashed, checked and copied into a snapshot is the same bytes."""
    try:
        before = path.stat()
        data = path.read_bytes()
        after = path.stat()
    except (FileNotFoundError, IsADirectoryError):
        return None
    if not (len(data) == before.st_size == after.st_size and before.st_mtime_ns == after.st_mtime_ns):
        return None  # being written right now
    return data if complete(path.name, data) else None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def mac(key: bytes, rel: str, digest: str) -> str:
    return hmac.new(key, f"{rel}\0{digest}".encode(), hashlib.sha256).hexdigest()


def mentions(state: bytes, ckpt: Path) -> bool:
    """Whether an experiment state names checkpoint directory `ckpt` (`<trial>/checkpoint_<n>`): Tune keeps
    each trial's checkpoints as a hex-encoded cloudpickle inside the JSON, so the path's hex appears there.
    Read, never unpickled; a false match only keeps a spare copy."""
    return ckpt.as_posix().encode().hex().encode() in state


def read_signature(out: Path) -> dict[str, str] | None:
    """The signed files (relative path -> MAC) of `out`, or None when there is no signature file."""
    path = Path(out) / SIGNATURE_FILE
    try:
        files = json.loads(path.read_text())["files"]
    except FileNotFoundError:
        return None
    if not isinstance(files, dict):
        raise ValueError("files is not an object")
    return files


def write_signature(out: Path, files: dict[str, str]) -> None:
    tmp = Path(out) / f"{SIGNATURE_FILE}.tmp"
    tmp.write_text(json.dumps({"version": 2, "files": files}, indent=0))
    os.replace(tmp, Path(out) / SIGNATURE_FILE)  # atomic: a reader sees the old or the new signature
