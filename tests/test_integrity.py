"""A search directory's signature (search/integrity.py), as a resume checks it: unsigned and changed files
refused; what a kill leaves between Tune's writes and the signature (rewritten state files, a file caught
mid-write, a trial file cut short, a checkpoint Tune deleted or one not yet reported, a trial the signed
state does not know, a partial results line) rolled back, restored or set aside rather than loaded; and
the signing key never pickled into the directory. In process, on hand-made directories and on a copy of
conftest.py's `real_search` (every state file Tune rewrites must roll back)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest

from himari_ray.search.integrity import DirectorySigner
from himari_ray.search.resume_check import verify_directory
from himari_ray.search.signed_files import QUARANTINE_DIR, REWRITTEN, SIGNATURE_FILE, WRITTEN_ONCE
from himari_ray.types import UserInputError


def test_signature_refuses_unsigned_and_changed_files(tmp_path):
    out = tmp_path / "s"
    (out / "tune" / "trial_0001").mkdir(parents=True)
    state = out / "tune" / "searcher-state.pkl"
    state.write_bytes(pickle.dumps({"a": 1}))
    (out / "tune" / "trial_0001" / "result.json").write_text("{}\n")
    DirectorySigner(out).sign()
    verify_directory(out)  # as written: accepted
    (out / "tune" / "trial_0001" / "result.json").write_text('{"more": 1}\n')  # plain data: not signed
    verify_directory(out)
    state.write_bytes(pickle.dumps({"a": 2}))
    with pytest.raises(UserInputError, match=r"searcher-state\.pkl: changed since the search signed it"):
        verify_directory(out)
    DirectorySigner(out).sign()
    (out / "tune" / "tuner.pkl").write_bytes(b"x")
    with pytest.raises(UserInputError, match=r"tuner\.pkl: not signed"):
        verify_directory(out)
    (out / "tune" / "tuner.pkl").unlink()
    # A driver killed between Tune's write of its state and the signature: rolled back, not loaded as is.
    exp = out / "tune" / "experiment_state-1.json"
    exp.write_text('{"v": 1}')
    DirectorySigner(out).sign()
    exp.write_text('{"v": 2}')
    late = out / "tune" / "trial_0001" / "checkpoint_000001" / "state.pkl"
    late.parent.mkdir()
    late.write_bytes(b"unsigned")
    notes = verify_directory(out)
    assert exp.read_text() == '{"v": 1}' and not late.exists()
    assert (out / QUARANTINE_DIR / late.relative_to(out)).read_bytes() == b"unsigned"  # moved, not lost
    assert len(notes) == 2
    verify_directory(out)  # now clean
    (out / SIGNATURE_FILE).unlink()
    with pytest.raises(UserInputError, match="missing; refusing"):
        verify_directory(out)


def test_a_kill_after_a_new_snapshot_but_before_its_signature_still_rolls_back(tmp_path, monkeypatch):
    """Signing copies each rewritten state file to a snapshot, then writes the signature. A driver killed in
    between must still find a snapshot the signature names (the previous version stays until then)."""
    from himari_ray.search import integrity

    out = tmp_path / "s"
    (out / "tune").mkdir(parents=True)
    exp = out / "tune" / "experiment_state-1.json"
    exp.write_text('{"v": 1}')
    signer = DirectorySigner(out)
    signer.sign(top_level_only=True)
    exp.write_text('{"v": 2}')

    def killed(*args, **kwargs):  # the driver dies right after the new snapshot, before the new signature
        raise KeyboardInterrupt

    monkeypatch.setattr(integrity.os, "replace", lambda src, dst, _real=os.replace: (
        _real(src, dst) if Path(dst).parent.name == integrity.SNAPSHOT_DIR else killed()))  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        signer.sign(top_level_only=True)
    monkeypatch.undo()
    exp.write_text('{"v": 3}')  # and Tune wrote once more
    notes = verify_directory(out)
    assert exp.read_text() == '{"v": 1}' and len(notes) == 1 and "rolled back" in notes[0]
    signer.sign(top_level_only=True)
    assert len(list((out / integrity.SNAPSHOT_DIR).iterdir())) == 1  # older versions pruned once signed


def test_every_state_file_tune_rewrites_rolls_back_after_a_kill(real_search, tmp_path):
    """A driver killed between Tune's write of a state file and its signature must resume from the signed
    version. Every file a real search leaves directly under tune/ is either written once (a change is
    tampering) or known to be rewritten (rolled back); a new kind of Tune file fails here, not in a resume."""
    out = tmp_path / "out"
    shutil.copytree(real_search[0], out)
    top = sorted(p for p in (out / "tune").iterdir() if p.is_file())
    unknown = [p.name for p in top if p.name not in WRITTEN_ONCE and not p.name.startswith(REWRITTEN)]
    assert not unknown, f"Tune state files the signer does not know: {unknown}"
    rewritten = [p for p in top if p.name.startswith(REWRITTEN)]
    assert {p.name.split("-")[0] for p in rewritten} >= {"experiment_state", "searcher", "search_gen_state"}
    signed = {p: p.read_bytes() for p in rewritten}
    for p in rewritten:  # Tune's next step, written just before the kill
        p.write_bytes(b"written after the last signature")
    notes = verify_directory(out)
    assert len(notes) == len(rewritten) and all("rolled back" in n for n in notes)
    assert all(p.read_bytes() == data for p, data in signed.items())
    (out / "tune" / "tuner.pkl").write_bytes(b"x")
    with pytest.raises(UserInputError, match=r"tuner\.pkl: changed since the search signed it"):
        verify_directory(out)


def tune_state(out: Path, trials: dict[str, list[str]]) -> Path:
    """An experiment state in Tune's layout: each trial (directory name -> the checkpoints it keeps) as a
    JSON string, its checkpoints inside a hex-encoded blob the way Tune pickles its checkpoint manager."""
    blob = "".join(f"/x/tune/{t}/{c}".encode().hex() for t, cks in trials.items() for c in cks)
    data = [
        [json.dumps({"trial_id": t, "relative_logdir": t}), json.dumps({"checkpoint_manager": blob})] for t in trials
    ]
    path = out / "tune" / "experiment_state-x.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"trial_data": data, "runner_data": {}}))
    return path


def test_a_file_caught_mid_write_is_never_signed(tmp_path):
    """Tune's sync copies its state over tune/ in place: a signature taken mid-copy must keep the last whole
    version signed (issue 18: an empty experiment_state was signed and its signed copy was empty too)."""
    out = tmp_path / "s"
    exp = tune_state(out, {})
    searcher = out / "tune" / "searcher-state-x.pkl"
    searcher.write_bytes(pickle.dumps({"n": 1}))
    signer = DirectorySigner(out)
    signer.sign()
    whole = {exp: exp.read_bytes(), searcher: searcher.read_bytes()}
    exp.write_bytes(b"")  # the next copy had just begun: truncated, nothing written yet
    searcher.write_bytes(pickle.dumps({"n": 2})[:-3])
    signer.sign(top_level_only=True)
    notes = verify_directory(out)
    assert len(notes) == 2 and all("rolled back" in n for n in notes)
    assert all(p.read_bytes() == data for p, data in whole.items())


def test_a_trial_file_cut_short_is_restored_and_a_changed_one_refused(tmp_path):
    """params.json and params.pkl are copied over themselves on every sync: a kill mid-copy leaves a prefix
    of the signed content (restored, where the issue's run was refused as tampering); other content is not."""
    out = tmp_path / "s"
    tune_state(out, {"trial_a": []})
    params = out / "tune" / "trial_a" / "params.json"
    params.parent.mkdir(parents=True)
    params.write_text(json.dumps({"trade_cost": 0.1, "entropy_coeff": 0.01}))
    pkl = params.with_name("params.pkl")
    pkl.write_bytes(pickle.dumps({"trade_cost": 0.1}))
    DirectorySigner(out).sign()
    whole = params.read_bytes()
    for cut in (0, 7):
        params.write_bytes(whole[:cut])
        notes = verify_directory(out)
        assert params.read_bytes() == whole and len(notes) == 1 and "cut short" in notes[0]
    pkl.write_bytes(pickle.dumps({"trade_cost": 0.2}))
    with pytest.raises(UserInputError, match=r"params\.pkl: changed since the search signed it"):
        verify_directory(out)


def test_checkpoints_are_signed_once_reported_and_kept_while_a_signed_state_names_them(tmp_path):
    """A trial writes its checkpoint file by file (not signed until Tune reports it); Tune deletes the
    previous checkpoint as it registers a newer one, before the state naming that one is signed."""
    from himari_ray.search.signed_files import LINKS_DIR, SNAPSHOT_DIR, read_signature

    out = tmp_path / "s"
    exp = tune_state(out, {"trial_a": ["checkpoint_000001"]})
    first = out / "tune" / "trial_a" / "checkpoint_000001"
    first.mkdir(parents=True)
    (first / "state.pkl").write_bytes(pickle.dumps({"weights": [1.0] * 100}))
    signer = DirectorySigner(out, live=True)
    signer.sign()
    assert "tune/trial_a/checkpoint_000001/state.pkl" not in read_signature(out)  # perhaps still arriving
    signer.register(first)
    signer.sign_trials()
    assert "tune/trial_a/checkpoint_000001/state.pkl" in read_signature(out)
    saved = (first / "state.pkl").read_bytes()
    shutil.rmtree(first)  # Tune registered checkpoint_000002 and deleted this one; then the driver was killed
    second = first.with_name("checkpoint_000002")
    second.mkdir()
    (second / "state.pkl").write_bytes(pickle.dumps({"weights": [2.0] * 100})[:50])
    notes = verify_directory(out)
    assert (first / "state.pkl").read_bytes() == saved and not second.exists()
    assert (out / QUARANTINE_DIR / "tune" / "trial_a" / "checkpoint_000002" / "state.pkl").is_file()
    assert len(notes) == 2 and "restored from its signed links" in " ".join(notes)
    tune_state(out, {"trial_a": []})  # a newer state that no longer names it: its links go
    shutil.rmtree(first)
    DirectorySigner(out, live=True).sign()
    assert not (out / SNAPSHOT_DIR / LINKS_DIR / "trial_a" / "checkpoint_000001").exists()
    assert exp.is_file()


def test_a_trial_the_signed_state_does_not_know_and_a_partial_line_are_set_right(tmp_path):
    """The kill came after Tune created trial_b (its directory copied into tune/) but before a signature
    held the state naming it: a resume would make a second trial with its number. And a results file cut
    mid-line would swallow the first report appended after the resume."""
    out = tmp_path / "s"
    tune_state(out, {"trial_a": []})
    for trial in ("trial_a", "trial_b"):
        (out / "tune" / trial).mkdir()
        (out / "tune" / trial / "params.json").write_text("{}")
    DirectorySigner(out).sign()
    results = out / "tune" / "trial_a" / "result.json"
    results.write_text('{"training_iteration": 1}\n{"training_iter')
    notes = verify_directory(out)
    assert not (out / "tune" / "trial_b").exists() and (out / QUARANTINE_DIR / "tune" / "trial_b").is_dir()
    assert results.read_text() == '{"training_iteration": 1}\n' and len(notes) == 2


def test_the_signing_key_never_travels_into_the_search_directory(tmp_path):
    """Tune pickles its callbacks into tune/tuner.pkl: the signer's key must not be in them."""
    from ray import cloudpickle

    from himari_ray.search.integrity import signing_callback
    from himari_ray.search.interrupt import GracefulInterrupt
    from himari_ray.search.signed_files import key_file

    blob = cloudpickle.dumps([signing_callback(tmp_path), GracefulInterrupt(str(tmp_path)).callback()])
    key_hex = key_file().read_text().strip()
    assert key_hex.encode() not in blob and bytes.fromhex(key_hex) not in blob
    assert cloudpickle.loads(blob)  # and they still unpickle (a restored run replaces them)
