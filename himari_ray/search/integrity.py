"""Resume never runs untrusted code: the files `--resume` would unpickle are authenticated first.

Resuming a search unpickles Tune's state (`tuner.pkl`, the searcher's state, the trials inside
`experiment_state-*.json`) and RLlib's checkpoints. Anyone who can write into a search directory could
replace one of them with a pickle that runs a command. So while a search runs, every file under `tune/`
that a resume may load is signed with HMAC-SHA256 under a per-user key kept outside the search
directory (`~/.config/himari-ray/state.key`, mode 0600, or `$HIMARI_RAY_KEY_FILE`); `--resume` verifies
every one of them before anything is loaded and refuses, naming the file, if one is unsigned or changed.

A driver can be killed (SIGKILL) at any instant, and Tune writes nothing atomically into `tune/`: a
background thread copies its staging directory over `tune/` in place on every step (the state files,
`tuner.pkl` on a resumed run, each trial's `params.*`), trial processes write checkpoints file by file, and
Tune deletes a trial's older checkpoint before the state naming the newer one is saved. So:
only complete files are signed (read once, size stable, JSON that parses, pickles whose opcodes reach their
STOP), Tune's state is signed from its staging copy (complete, and the newest), each signed version of a
rewritten file is kept as a snapshot (`.himari-signed/`), and signed checkpoints are kept as hard links
until no signed state names them. A resume first checks everything without writing, then
restores what a kill left half-written from those signed copies and moves anything written after the last
signature to `.himari-quarantine/`. A signed file that changed otherwise is tampering: refused.
"""

from __future__ import annotations

import hmac
import os
import re
import shutil
from pathlib import Path
from typing import Any

from himari_ray.search.signed_files import (
    CHECKPOINT,
    LINKS_DIR,
    PLAIN,
    REWRITTEN,
    SNAPSHOT_DIR,
    STATE,
    SYNC,
    TRIAL_PARAMS,
    WRITTEN_ONCE,
    checkpoint_dir,
    kind,
    mac,
    mentions,
    read_signature,
    read_whole,
    sha256,
    signing_key,
    snapshot_rel,
    tune_rel,
    write_signature,
)


class DirectorySigner:
    """Signs the loadable files under `out/tune`, and only complete versions of them.

    `live` (a run is writing): a checkpoint directory is signed once Tune reports it (`register`): before
    that its files may still be arriving. Tune's state files are read from Tune's own staging copy when
    `staging` names it: Tune writes that copy completely before the step ends, while its copy under tune/
    may be mid-write by Tune's sync thread."""

    def __init__(self, out: Path, live: bool = False):
        self.out = Path(out)
        self.live = live
        self.key = signing_key(create=True)
        self.staging: Path | None = None
        self._registered: set[Path] = set()  # checkpoint directories (relative to tune/) Tune reported
        self._cache: dict[Path, tuple[int, int, str]] = {}  # file -> size, mtime, digest of a whole version
        self._top: dict[str, tuple[int, int]] = {}
        self._walked = False
        try:  # the last signature written, by this signer or an earlier driver: kept where nothing newer is whole
            self._files = read_signature(self.out) or {}
        except (ValueError, KeyError, TypeError):
            self._files = {}

    def __reduce__(self) -> tuple:
        # Tune pickles its callbacks into tune/tuner.pkl: the key must never travel with them into the
        # directory it protects. Unpickled, a signer reads the key from the user's key file again.
        return (DirectorySigner, (self.out, self.live))

    def register(self, checkpoint_path: str | Path) -> None:
        """Tune reported this checkpoint: every file of it is on disk."""
        try:
            rel = Path(checkpoint_path).resolve().relative_to((self.out / "tune").resolve())
        except ValueError:  # kept on other storage (--tune-storage): signed when copied back, after the run
            return
        self._registered.add(Path(*rel.parts[:2]))

    def sign_if_state_changed(self, staging: Path | None = None) -> None:
        """Sign when a file directly under tune/ or Tune's staging directory changed: a few stat calls per
        step instead of a walk over every trial directory (the first call walks everything once)."""
        if staging is not None:
            self.staging = Path(staging)
        top = {}
        for folder in (self.out / "tune", self.staging):
            for path in _files_in(folder):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                top[str(path)] = (st.st_size, st.st_mtime_ns)
        if top != self._top:
            self._top = top
            self.sign(top_level_only=self._walked)

    def sign(self, top_level_only: bool = False) -> None:
        """Sign the loadable files under tune/: all of them, or with `top_level_only` just Tune's state
        files directly under tune/ (rewritten every step; trial files are signed by `sign_trials`)."""
        self._sign(top=True, trials=not top_level_only)

    def sign_trials(self) -> None:
        """Sign the trial directories (a checkpoint arrived), keeping the state files' signatures as they are."""
        self._sign(top=False, trials=True)

    def _sign(self, top: bool, trials: bool) -> None:
        prev = self._files
        files = {k: v for k, v in prev.items() if (k.count("/") == 1) != top} if not (top and trials) else {}
        for rel, src in self._candidates(top, trials):
            what = kind(rel)
            key = tune_rel(rel)
            if what == PLAIN:
                continue
            if what == CHECKPOINT and self.live and checkpoint_dir(rel) not in self._registered:
                # Not reported yet, so perhaps still being written: only a version an earlier signature
                # holds (a checkpoint of an earlier driver) stays signed.
                digest, _ = self._digest(src)
                if key in prev and digest is not None and hmac.compare_digest(prev[key], mac(self.key, key, digest)):
                    files[key] = prev[key]
                continue
            digest, data = self._digest(src, cache=what != STATE)  # state files change every step: always read
            snap = self._snapshot(rel, src, digest, data) if digest is not None and what in (STATE, SYNC) else None
            if digest is None or (what in (STATE, SYNC) and snap is None):
                # Caught mid-write: the last whole version stays signed (and its snapshot with it).
                files.update({k: v for k, v in prev.items() if k == key or _is_snapshot_of(k, rel)})
                continue
            files[key] = mac(self.key, key, digest)
            if snap is not None:
                files[snap] = mac(self.key, snap, digest)
        if trials:
            self._link_checkpoints(files)
            self._walked = True
        write_signature(self.out, files)
        self._files = files
        self._prune(files)

    def _candidates(self, top: bool, trials: bool) -> list[tuple[Path, Path]]:
        """(path relative to tune/, the file to read it from): Tune's staging copy where it has one."""
        tune = self.out / "tune"
        staging = self.staging if self.staging is not None and self.staging.is_dir() else None
        found: list[tuple[Path, Path]] = []
        if top:
            names = {p.name for p in _files_in(tune)}
            names |= {p.name for p in _files_in(staging) if p.name.startswith(REWRITTEN)}
            for name in sorted(names):
                if name.startswith(".") and name not in WRITTEN_ONCE:
                    continue  # Tune's temporary files (`.<uuid>-tmp-...`), which its sync sometimes copies
                found.append((Path(name), self._source(Path(name), staging)))
            # A new trial's params, as Tune staged them when it created the trial: signed with the state
            # that names the trial, not only at the trial's first checkpoint.
            for trial in sorted(p for p in staging.iterdir() if p.is_dir()) if staging is not None else []:
                for name in TRIAL_PARAMS:
                    rel = Path(trial.name, name)
                    if tune_rel(rel) not in self._files and (staging / rel).is_file():
                        found.append((rel, staging / rel))
        if trials and tune.is_dir():
            for trial in sorted(p for p in tune.iterdir() if p.is_dir()):
                for path in sorted(trial.rglob("*")):
                    if path.is_file():
                        rel = path.relative_to(tune)
                        found.append((rel, self._source(rel, staging)))
        return found

    def _source(self, rel: Path, staging: Path | None) -> Path:
        if staging is not None and kind(rel) in (STATE, SYNC) and (staging / rel).is_file():
            return staging / rel
        return self.out / "tune" / rel

    def _digest(self, src: Path, cache: bool = True) -> tuple[str | None, bytes | None]:
        """sha256 of `src` if it is whole (else None), and the bytes read for it (None when the digest came
        from the cache: re-read only when its size or mtime changed)."""
        try:
            st = src.stat()
        except FileNotFoundError:
            return None, None
        hit = self._cache.get(src)
        if cache and hit is not None and hit[:2] == (st.st_size, st.st_mtime_ns):
            return hit[2], None
        data = read_whole(src)
        if data is None:
            return None, None
        digest = sha256(data)
        self._cache[src] = (st.st_size, st.st_mtime_ns, digest)
        return digest, data

    def _snapshot(self, rel: Path, src: Path, digest: str, data: bytes | None) -> str | None:
        """Keep this version as `.himari-signed/<rel>.<digest prefix>`, written by rename from bytes that hash
        to `digest`; its relative path, or None if `src` changed meanwhile. Older versions are deleted only
        after a newer signature is written, so a kill at any instant leaves the signed one."""
        snap_rel = snapshot_rel(rel, digest)
        snap = self.out / snap_rel
        if snap.is_file():
            return snap_rel
        if data is None:
            data = read_whole(src)
        if data is None or sha256(data) != digest:
            return None
        snap.parent.mkdir(parents=True, exist_ok=True)
        tmp = snap.with_name(f".{snap.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, snap)
        return snap_rel

    def _link_checkpoints(self, files: dict[str, str]) -> None:
        """Hard-link every signed checkpoint file into `.himari-signed/checkpoints/` (a copy where the
        filesystem has no hard links): Tune deletes a trial's older checkpoint as it registers a newer one,
        before the state naming the newer one is saved and signed."""
        links = self.out / SNAPSHOT_DIR / LINKS_DIR
        for key in files:
            rel = Path(key.removeprefix("tune/"))
            if not key.startswith("tune/") or kind(rel) != CHECKPOINT or (links / rel).exists():
                continue
            (links / rel).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(self.out / "tune" / rel, links / rel)
            except FileNotFoundError:  # deleted by Tune since it was signed
                continue
            except OSError:
                shutil.copy2(self.out / "tune" / rel, links / rel)

    def _prune(self, files: dict[str, str]) -> None:
        """After a signature: delete the snapshots it no longer names, and the hard-linked checkpoints that
        are gone from tune/ and that no state it signs names."""
        snap_dir = self.out / SNAPSHOT_DIR
        if not snap_dir.is_dir():
            return
        for folder in [snap_dir, *(p for p in snap_dir.iterdir() if p.is_dir() and p.name != LINKS_DIR)]:
            for snap in _files_in(folder):
                if not snap.name.startswith(".") and snap.relative_to(self.out).as_posix() not in files:
                    snap.unlink(missing_ok=True)
        links = snap_dir / LINKS_DIR
        gone = [c for c in links.glob("*/checkpoint_*") if not (self.out / "tune" / c.relative_to(links)).exists()]
        if gone:
            states = [(self.out / k).read_bytes() for k in files if k.startswith(f"{SNAPSHOT_DIR}/experiment_state-")]
            for c in gone:
                if not any(mentions(s, c.relative_to(links)) for s in states):
                    shutil.rmtree(c, ignore_errors=True)


def _files_in(folder: Path | None) -> list[Path]:
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file())


def _is_snapshot_of(key: str, rel: Path) -> bool:
    prefix = f"{SNAPSHOT_DIR}/{rel.as_posix()}"
    return key == prefix or (key.startswith(prefix + ".") and re.fullmatch("[0-9a-f]{16}", key[len(prefix) + 1 :]))


def signing_callback(out: Path) -> Any:
    """A Tune callback that keeps `out`'s signature current: after each step (Tune saves its experiment
    state at the end of a step) and each trial checkpoint, and at the end."""
    from ray import tune

    signer = DirectorySigner(out, live=True)

    class Signer(tune.Callback):
        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            signer.sign_if_state_changed(Path(trials[0].local_experiment_path) if trials else None)

        def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
            signer.register(checkpoint.path)
            signer.sign_trials()

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            signer.sign()

    return Signer()
