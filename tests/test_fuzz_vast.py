"""The bad-input contract for `himari-ray vast` (issue 18), fuzzed: API key files, launch.json and the
ledger corrupted at random, instance ids, offer records with fields dropped or retyped, network failures
and broken answers, and `vast up` failing at each step. Every refusal is one line on stderr, exit code 2,
no traceback, nothing on disk written, changed or left behind; the API key is never in stdout, stderr or
any file.

Everything runs in process (`tests.test_fuzz.run`) against the fake Vast server (tests/fake_vast.py) or a
raw socket server that misbehaves, and never starts Ray: no fake box ever runs an on-start script (every
offer `up` may rent is `_stuck` or `_refuse`d).
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from himari_ray.launch import vast
from himari_ray.launch.launcher import LaunchState
from himari_ray.launch.ledger import Ledger
from tests.fake_vast import FakeVast
from tests.test_fuzz import FUZZ, assert_refused, run, tree_state
from tests.test_vast import KEY, OFFERS

REPO = Path(__file__).resolve().parents[1]
SPACE = str(REPO / "tests" / "spaces" / "e2e.yaml")
KEY_FILE = Path(".config") / "vastai" / "vast_api_key"
BOM = b"\xef\xbb\xbf"


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    f = FakeVast(tmp_path_factory.mktemp("fake-vast"), [], KEY)
    yield f
    f.stop()


def reset(fake: FakeVast, offers: list[dict] | None = None) -> None:
    """The fake as new: these offers (none by default), no instance, no request seen, nothing overridden."""
    fake.offers[:] = [dict(o) for o in (offers or [])]
    fake.answer_offers = None
    fake.fail_next = 0
    fake.requests.clear()
    for iid in list(fake.instances):
        fake._kill(iid)
        fake.instances.pop(iid, None)


def paths(root: Path) -> list[str]:
    """Every path under root, directories too (tree_state sees files only; an empty dir left is a trace)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def key_nowhere(root: Path, *texts: str, fake: FakeVast | None = None) -> None:
    for text in texts:
        assert KEY not in text, text
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink() and p.name != "vast_api_key":
            assert KEY.encode() not in p.read_bytes(), p
    if fake is not None:
        assert all(KEY not in path for _, path, _ in fake.requests)  # only ever in the Authorization header


@contextlib.contextmanager
def workdir(url: str, key: str | None = KEY):
    """A fresh directory as cwd and HOME (no key file of the user's), VAST_URL and VAST_API_KEY set."""
    with tempfile.TemporaryDirectory() as d, pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", d)
        mp.setenv("VAST_URL", url)
        if key is None:
            mp.delenv("VAST_API_KEY", raising=False)
        else:
            mp.setenv("VAST_API_KEY", key)
        yield Path(d)


def vast_cmd(root: Path, *args: str) -> tuple[int, str, str]:
    return run(["vast", *args], root)


# --- API key files ---------------------------------------------------------------------------------------

KEY_PIECES = [KEY.encode(), b" ", b"\t", b"\n", b"\r\n", b"\x00", b"\x1b[31m", b"\xff", "é".encode(), BOM, b"\x0c"]
KEY_DATA = st.one_of(
    st.lists(st.sampled_from(KEY_PIECES), max_size=6).map(b"".join),
    st.tuples(st.binary(max_size=40), st.binary(max_size=40)).map(lambda t: t[0] + KEY.encode() + t[1]),
    st.integers(min_value=4000, max_value=300_000).map(lambda n: (KEY.encode() + b"\n") * (n // len(KEY) + 1)),
    st.text(max_size=60).map(str.encode),
)


def accepted_key(data: bytes) -> str | None:
    """The key a key file holding `data` gives: what vastai's own reader would take, or None."""
    if len(data) > vast.MAX_KEY_BYTES:
        return None
    try:
        key = data.removeprefix(BOM).decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    if not key or len(key) > 512 or any(c.isspace() or not c.isprintable() for c in key):
        return None
    return key


@settings(FUZZ, max_examples=60)
@given(data=KEY_DATA)
def test_fuzz_key_files(fake, data):
    reset(fake, OFFERS)
    with workdir(fake.url, key=None) as root:
        (root / KEY_FILE).parent.mkdir(parents=True)
        (root / KEY_FILE).write_bytes(data)
        before = tree_state(root)
        code, out, err = vast_cmd(root, "offers")
        key = accepted_key(data)
        if key == KEY:
            assert code == 0 and err == "", err
        elif key is not None:  # a well-formed key, but not ours: Vast refuses it, and the line does not quote it
            assert_refused(code, err)
            assert "HTTP 401" in err and key not in err
        else:
            assert_refused(code, err)
            assert str(root / KEY_FILE) in err and not fake.requests  # refused before any request carried it
        assert tree_state(root) == before
        key_nowhere(root, out, err, fake=fake)


# --- launch.json and the ledger -------------------------------------------------------------------------

IID = 7000
LABEL = "himari-0a1b2c3d"
MANAGE = ["status", "logs", "pull", "down"]


def real_launch(root: Path, ended: bool = True) -> Path:
    """A launch directory as `up` leaves it after a search ended (or, `ended=False`, as one killed while its
    instance ran leaves it): launch.json and a ledger of every event."""
    out = root / "launch"
    out.mkdir()
    info = {"label": f"{LABEL}-0", "offer": 11, "gpu": "RTX 4090", "num_gpus": 1, "dph": 0.35}
    LaunchState(out, {"label": LABEL, "space": "e2e", "study": "e2e", "instances": {str(IID): info}}).save()
    ledger = Ledger(out)
    ledger.record("created", IID, offer=11, gpu="RTX 4090", num_gpus=1, dph=0.35)
    ledger.record("ready", IID)
    if ended:
        ledger.record("trials", finished=2)
        ledger.record("destroyed", IID, reason="finished")
        ledger.record("down")
    return out


NASTY = st.one_of(
    st.sampled_from([None, True, False, -1, 0, 1.5, -0.0, 1e308, 10**40, "", "abc", "7000", [], {}, [7000], {"a": 1}]),
    st.text(max_size=20),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
)


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
def test_fuzz_byte_corruptions_of_a_real_launch(fake, target, kind, at, junk, command):
    reset(fake)
    with workdir(fake.url) as root:
        out = real_launch(root)
        path = out / target
        path.write_bytes(corrupt_bytes(path.read_bytes(), kind, at, junk))
        check_manage(root, out, command, fake, tree_state(root))


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
def test_fuzz_edits_of_a_real_launch(fake, target, where, line, field, how, value, command):
    """Keys of launch.json and fields of ledger events set to wrong types, dropped, or a whole record
    replaced: refused naming the file (and the line of the ledger), or harmless."""
    reset(fake)
    with workdir(fake.url) as root:
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
    return t.isascii() and t.isdigit() and len(t) <= 16 and 0 < int(t) <= vast.MAX_ID


@settings(FUZZ, max_examples=50)
@given(text=ID_TEXT)
def test_fuzz_instance_ids_on_the_command_line(fake, text):
    reset(fake)
    with workdir(fake.url) as root:
        out = real_launch(root)
        before = tree_state(root)
        code, stdout, err = vast_cmd(root, "logs", str(out), f"--instance={text}")
        if is_id(text) and int(text) == IID:  # ours, and Vast lists it no more
            assert code == 1 and "no running instance" in stdout, err
        else:
            assert_refused(code, err)
            assert "--instance" in err
            assert ("not an instance of this launch" in err) == is_id(text), err
            assert not fake.requests  # refused before Vast was asked
        assert tree_state(root) == before


@settings(FUZZ, max_examples=50)
@given(text=ID_TEXT, where=st.sampled_from(["launch.json", "ledger.jsonl"]), command=st.sampled_from(MANAGE))
def test_fuzz_instance_ids_in_the_files(fake, text, where, command):
    """Any text as the instance id in launch.json (an object key) or the ledger (a number where it parses
    as one, else the text): an id is taken, anything else refused naming the file."""
    reset(fake)
    with workdir(fake.url) as root:
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
            valid = isinstance(value, int) and not isinstance(value, bool) and 0 < value <= vast.MAX_ID
        before = tree_state(root)
        code, stdout, err = vast_cmd(root, command, str(out))
        if valid:
            assert code in (0, 1) and err == "", err
        else:
            assert_refused(code, err)
            assert where in err, err
            assert tree_state(root) == before
        key_nowhere(root, stdout, err, fake=fake)


# --- offer records -----------------------------------------------------------------------------------------

#: Fields an offer must have with the right type to be listed or rented, and values each is surely wrong as.
REQUIRED = {
    "id": ["11", 0, -3, 1.5, None, True, [], "abc"],
    "gpu_name": [None, 4090, [], {}, True],
    "num_gpus": [None, "1", 0, -1, 1.5, True, []],
    "dph_total": [None, "0.3", "cheap", -0.1, [], True, {}],
    "reliability2": [None, "high", -1, [], False],
    "disk_space": [None, "80", -5, {}],
}
#: Fields that are shown or not checked at all: any value must be harmless.
OPTIONAL = ["geolocation", "gpu_ram", "rentable", "verified", "extra"]


@st.composite
def offer_records(draw):
    """(records, broken): Vast's answer of up to 8 offers, some with a required field dropped or retyped."""
    n = draw(st.integers(min_value=1, max_value=8))
    records, broken = [], 0
    for i in range(n):
        offer = dict(OFFERS[i % 2]) | {"id": 100 + i, "dph_total": round(0.1 + 0.05 * i, 2)}
        fate = draw(st.sampled_from(["intact", "drop", "retype", "optional"]))
        if fate == "drop":
            offer.pop(draw(st.sampled_from(sorted(REQUIRED))))
        elif fate == "retype":
            name = draw(st.sampled_from(sorted(REQUIRED)))
            offer[name] = draw(st.sampled_from(REQUIRED[name]))
        elif fate == "optional":
            offer[draw(st.sampled_from(OPTIONAL))] = draw(NASTY)
        broken += fate in ("drop", "retype")
        records.append(offer)
    if draw(st.booleans()):
        records.insert(0, draw(st.sampled_from([None, 5, "offer", [1, 2]])))  # not an object at all
        broken += 1
    return records, broken


@settings(FUZZ, max_examples=50)
@given(answer=offer_records())
def test_fuzz_offer_records(fake, answer):
    """Offers with a field missing or mistyped are never listed, and never silently: the warning counts
    them; when none is usable the command is refused."""
    records, broken = answer
    reset(fake)
    fake.answer_offers = records
    with workdir(fake.url) as root:
        code, out, err = vast_cmd(root, "offers")
        assert "Traceback" not in err
        if broken == len(records):
            assert_refused(code, err)
            assert f"no offer can be checked against the filter (skipped {broken} of {broken} offers" in err
        else:
            assert code == 0, err
            shown = [int(line.split()[0]) for line in out.splitlines()[1:]]
            gpu_ram = [i for i, r in enumerate(records) if isinstance(r, dict) and "gpu_ram" in r]
            assert len(shown) == len(records) - broken, (out, gpu_ram)
            assert shown == sorted(shown)  # cheapest first (prices rise with the id)
            head = f"warning: skipped {broken} of {len(records)} offers Vast returned: "
            assert (err.startswith(head) and err.count("\n") == 1) if broken else err == "", err
        assert not fake.instances
        key_nowhere(root, out, err, fake=fake)


# --- network failures and broken answers -----------------------------------------------------------------


class Misbehaving(socketserver.ThreadingTCPServer):
    """An HTTP server on 127.0.0.1 that answers every request the way `mode` says, badly."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.mode, self.body = "garbage", b""
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        srv: Misbehaving = self.server  # type: ignore[assignment]
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            data += chunk
        mode, body = srv.mode, srv.body
        if mode == "timeout":
            time.sleep(1.5)
            return
        if mode == "reset":
            return  # closes without a word
        status, ctype = "200 OK", "application/json"
        if mode == "cut":
            self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b'{"offers": [')
            return
        if mode == "html502":
            status, ctype = "502 Bad Gateway", "text/html"
            body = b"<html><head><title>502 Bad Gateway</title></head><body>" + body + b"</body></html>"
        elif mode == "html200":
            ctype, body = "text/html", b"<!DOCTYPE html><html><body><p>Down for maintenance</p></body></html>"
        elif mode == "garbage":
            body = b"{" + body
        elif mode == "not_object":
            body = b"[1, 2, 3]"
        elif mode == "key_echo":  # a misconfigured proxy quoting the header back
            status, body = "500 Internal Server Error", json.dumps({"msg": f"bad header Bearer {KEY}"}).encode()
        head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        with contextlib.suppress(OSError):
            self.request.sendall(head.encode() + body)


@pytest.fixture(scope="module")
def bad_server():
    srv = Misbehaving()
    yield srv
    srv.shutdown()
    srv.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FAILURES = ["refused", "dns", "timeout", "reset", "cut", "html502", "html200", "garbage", "not_object", "key_echo"]
EXPECT = {
    "refused": "(Connection refused)",
    "dns": "cannot reach http://no-such-host.invalid (",
    "timeout": "(no answer within 0.4 s)",
    "reset": "(the server closed the connection without answering)",
    "cut": "(the connection closed mid-answer)",
    "html502": "HTTP 502: an HTML page (502 Bad Gateway)",
    "html200": "the answer is an HTML page (Down for maintenance)",
    "garbage": "the answer is not JSON",
    "not_object": "the answer is a JSON list, not an object",
    "key_echo": "HTTP 500: bad header Bearer ***",
}


@settings(FUZZ, max_examples=40)
@given(
    failure=st.sampled_from(FAILURES),
    command=st.sampled_from(["offers", "status", "logs", "pull", "down"]),
    body=st.binary(max_size=200),
    filters=st.sampled_from([[], ["--gpu", "RTX_4090", "--max-price", "0.5"], ["--filter", "gpu_ram>=24 dph<=2"]]),
)
def test_fuzz_network_failures(bad_server, failure, command, body, filters, monkeypatch):
    """The line names the reason and the endpoint's path, never its query string (the filter) nor the key."""
    monkeypatch.setattr(vast, "TIMEOUT_S", 0.4)
    url = {"refused": f"http://127.0.0.1:{closed_port()}", "dns": "http://no-such-host.invalid"}.get(
        failure, bad_server.url
    )
    bad_server.mode, bad_server.body = failure, body
    with workdir(url) as root:
        args = ["offers", *filters] if command == "offers" else [command, str(real_launch(root, ended=False))]
        before = tree_state(root)
        code, out, err = vast_cmd(root, *args)
        endpoint = "GET /bundles/:" if command == "offers" else "GET /instances/:"
        if command == "down":  # not bad input: what could not be destroyed is listed, exit 1
            assert code == 1 and err == "", err
            assert f"instance {IID}: could NOT be destroyed (DELETE /instances/{IID}/:" in out, out
            assert EXPECT[failure] in out, out
        else:
            assert_refused(code, err)
            assert endpoint in err and EXPECT[failure] in err, err
            assert "?" not in err.split(endpoint)[1] and "%7B" not in err
            assert tree_state(root) == before
        key_nowhere(root, out, err)


# --- `vast up` failing at each step ----------------------------------------------------------------------

STEPS = ["no_offer", "offers_unreachable", "offers_broken", "create_refused", "second_refused", "never_ready"]
OUTS = ["new", "nested", "empty", "nonempty"]


@settings(FUZZ, max_examples=16)
@given(step=st.sampled_from(STEPS), out_kind=st.sampled_from(OUTS), instances=st.integers(min_value=1, max_value=2))
def test_fuzz_vast_up_failures_leave_no_trace(fake, step, out_kind, instances):
    """Whatever step fails, --out is as it was (a new one gone, nested parents too; an empty one empty; a
    non-empty one refused untouched) and nothing is left rented."""
    offers = [dict(o) | {"_stuck": True} for o in OFFERS[:2]]  # no box ever runs its on-start (no Ray)
    if step == "create_refused":
        for o in offers:
            o["_refuse"] = True
    if step == "second_refused":
        offers[1]["_refuse"] = True
        instances = 2
    reset(fake, offers)
    if step == "offers_broken":
        fake.answer_offers = [{k: v for k, v in o.items() if k != "dph_total"} for o in offers]
    url = f"http://127.0.0.1:{closed_port()}" if step == "offers_unreachable" else fake.url
    with workdir(url) as root:
        out = {"nested": root / "a" / "b" / "run"}.get(out_kind, root / "run")
        if out_kind in ("empty", "nonempty"):
            out.mkdir()
        if out_kind == "nonempty":
            (out / "notes.txt").write_text("mine")
        before, listing = tree_state(root), paths(root)
        argv = ["up", SPACE, "--out", str(out), "--gpu", "RTX_4090", "--instances", str(instances)]
        code, stdout, err = vast_cmd(
            root, *argv, *(["--gpu", "H200"] if step == "no_offer" else []), "--ready-timeout", "1"
        )
        assert_refused(code, err)
        if out_kind == "nonempty":
            assert "--out exists and is not empty" in err and not fake.requests
        assert tree_state(root) == before and paths(root) == listing, (paths(root), stdout)
        assert not fake.instances
        if "created from offer" in stdout:  # something was rented: its end and its cost are said
            assert "destroyed (launch failed)" in stdout and "cost: $" in stdout, stdout
        key_nowhere(root, stdout, err, fake=fake)
