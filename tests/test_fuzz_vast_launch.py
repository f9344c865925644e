"""The bad-input contract for `himari-ray vast` (issue 18) on a launch directory, fuzzed: launch.json and the
ledger corrupted byte by byte or edited to wrong types, dropped keys and replaced records, and instance ids of
any text on the command line and in either file. `status`, `logs`, `pull` and `down` refuse in one line on
stderr naming the file (exit 2, no traceback, nothing on disk written or changed, nothing destroyed) or do
their work where the change is harmless; the API key is never in stdout, stderr or any file.

Everything runs in process (`tests.test_fuzz.run`) against the fake Vast (tests/fake_vast.py) and never
starts Ray.
"""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from himari_ray.types import MAX_ID
from tests.fake_vast import FakeVast
from tests.fuzz_vast_kit import IID, NASTY, key_nowhere, real_launch, reset, vast_cmd, workdir
from tests.test_fuzz import FUZZ, assert_refused, tree_state

MANAGE = ["status", "logs", "pull", "down"]


def corrupt_bytes(data: bytes, kind: str, at: float, junk: bytes) -> bytes:
    i = int(at * len(data))
    if kind == "truncate":
        return data[:i]
    if kind == "flip":
        return data[:i] + bytes([data[i] ^ (junk[0] if junk and junk[0] else 0x80)]) + data[i + 1 :]
    if kind == "insert":
        return data[:i] + junk + data[i:]
    if kind == "binary":
        return b"\xff\xfe\x00" + junk
    if kind == "empty":
        return b""
    raise AssertionError(kind)


def check_manage(root: Path, out: Path, command: str, fake: FakeVast, before: dict[str, str]) -> None:
    code, stdout, err = vast_cmd(root, command, str(out))
    assert "Traceback" not in err
    if code == 2:
        assert_refused(code, err)
        assert tree_state(root) == before  # refused: nothing appended, nothing destroyed
        assert not [r for r in fake.requests if r[0] == "DELETE"]
    else:  # harmless (a truncation at a line's end, a changed price): the command did its work
        assert code in (0, 1) and err == "", err
    key_nowhere(root, stdout, err, fake=fake)


@settings(FUZZ, max_examples=60)
@given(
    target=st.sampled_from(["launch.json", "ledger.jsonl"]),
    kind=st.sampled_from(["truncate", "flip", "insert", "binary", "empty"]),
    at=st.floats(min_value=0, max_value=1, exclude_max=True),
    junk=st.binary(min_size=1, max_size=30),
    command=st.sampled_from(MANAGE),
)
def test_fuzz_byte_corruptions_of_a_real_launch(fuzz_vast, target, kind, at, junk, command):
    reset(fuzz_vast)
    with workdir(fuzz_vast.url) as root:
        out = real_launch(root)
        path = out / target
        path.write_bytes(corrupt_bytes(path.read_bytes(), kind, at, junk))
        check_manage(root, out, command, fuzz_vast, tree_state(root))


DROP = object()


def set_in(node, keys: list, value) -> None:
    """Set node[k1][k2]... = value along `keys` as far as the path exists (a missing key is added); DROP
    removes the key instead."""
    for key in keys[:-1]:
        nxt = node.get(key) if isinstance(node, dict) else None
        if not isinstance(nxt, dict):
            break
        node = nxt
    if isinstance(node, dict):
        if value is DROP:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value


STATE_PATHS = [["label"], ["instances"], ["study"], ["space"], ["instances", str(IID)],
               ["instances", str(IID), "label"], ["instances", str(IID), "gpu"], ["instances", str(IID), "num_gpus"],
               ["instances", str(IID), "dph"], ["instances", str(IID), "owner"]]  # fmt: skip
EVENT_FIELDS = ["time", "event", "instance", "dph", "num_gpus", "gpu", "finished"]


@settings(FUZZ, max_examples=60)
@given(
    target=st.sampled_from(["launch.json", "ledger.jsonl"]),
    where=st.sampled_from(STATE_PATHS),
    line=st.integers(min_value=0, max_value=4),
    field=st.sampled_from(EVENT_FIELDS),
    how=st.sampled_from(["set", "drop", "whole"]),
    value=NASTY,
    command=st.sampled_from(MANAGE),
)
def test_fuzz_edits_of_a_real_launch(fuzz_vast, target, where, line, field, how, value, command):
    """Keys of launch.json and fields of ledger events set to wrong types, dropped, or a whole record
    replaced: refused naming the file (and the line of the ledger), or harmless."""
    reset(fuzz_vast)
    with workdir(fuzz_vast.url) as root:
        out = real_launch(root)
        path = out / target
        if target == "launch.json":
            data = json.loads(path.read_text())
            if how == "whole":
                data = value
            else:
                set_in(data, where, DROP if how == "drop" else value)
            path.write_text(json.dumps(data))
        else:
            events = [json.loads(x) for x in path.read_text().splitlines()]
            if how == "set":
                events[line][field] = value
            elif how == "drop":
                events[line].pop(field, None)
            else:
                events[line] = value
            path.write_text("".join(json.dumps(e) + "\n" for e in events))
        before = tree_state(root)
        code, _, err = vast_cmd(root, command, str(out))
        if code == 2:
            assert_refused(code, err)
            assert target in err, err
            assert tree_state(root) == before
        else:
            assert code in (0, 1) and err == "", err


ID_TEXT = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["", " ", "0", "-0", "1e5", "7000.0", "0x1b58", "٧٠٠٠", "7_000", "+7000", "7000\n", "NaN"]),
    st.text(max_size=25),
)


def is_id(text: str) -> bool:
    t = text.strip()
    return t.isascii() and t.isdigit() and len(t) <= 16 and 0 < int(t) <= MAX_ID


@settings(FUZZ, max_examples=50)
@given(text=ID_TEXT)
def test_fuzz_instance_ids_on_the_command_line(fuzz_vast, text):
    reset(fuzz_vast)
    with workdir(fuzz_vast.url) as root:
        out = real_launch(root)
        before = tree_state(root)
        code, stdout, err = vast_cmd(root, "logs", str(out), f"--instance={text}")
        if is_id(text) and int(text) == IID:  # ours, and Vast lists it no more
            assert code == 1 and "no running instance" in stdout, err
        else:
            assert_refused(code, err)
            assert "--instance" in err
            assert ("not an instance of this launch" in err) == is_id(text), err
            assert not fuzz_vast.requests  # refused before Vast was asked
        assert tree_state(root) == before


@settings(FUZZ, max_examples=50)
@given(text=ID_TEXT, where=st.sampled_from(["launch.json", "ledger.jsonl"]), command=st.sampled_from(MANAGE))
def test_fuzz_instance_ids_in_the_files(fuzz_vast, text, where, command):
    """Any text as the instance id in launch.json (an object key) or the ledger (a number where it parses
    as one, else the text): an id is taken, anything else refused naming the file."""
    reset(fuzz_vast)
    with workdir(fuzz_vast.url) as root:
        out = real_launch(root)
        if where == "launch.json":
            data = json.loads((out / where).read_text())
            data["instances"] = {text: data["instances"][str(IID)]}
            (out / where).write_text(json.dumps(data))
            valid = is_id(text) and text == text.strip()
        else:
            events = [json.loads(x) for x in (out / where).read_text().splitlines()]
            try:
                value = json.loads(text)
            except ValueError:
                value = text
            events[0]["instance"] = value
            (out / where).write_text("".join(json.dumps(e) + "\n" for e in events))
            valid = isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID
        before = tree_state(root)
        code, stdout, err = vast_cmd(root, command, str(out))
        if valid:
            assert code in (0, 1) and err == "", err
        else:
            assert_refused(code, err)
            assert where in err, err
            assert tree_state(root) == before
        key_nowhere(root, stdout, err, fake=fuzz_vast)
