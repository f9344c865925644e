"""The bad-input contract for `himari-ray vast` (issue 18), fuzzed: API key files, offer records with fields
dropped or retyped, network failures and broken answers, and `vast up` failing at each step. Every refusal
is one line on stderr, exit code 2, no traceback, nothing on disk written, changed or left behind; the API
key is never in stdout, stderr or any file. (A launch directory's files and instance ids are
`test_fuzz_vast_launch.py`'s.)

Everything runs in process (`tests.test_fuzz.run`) against the fake Vast server (tests/fake_vast.py) or a
raw socket server that misbehaves, and never starts Ray: no fake box ever runs an on-start script (every
offer `up` may rent is `_stuck` or `_refuse`d).
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from himari_ray.launch import vast
from tests.fuzz_vast_kit import IID, NASTY, key_nowhere, real_launch, reset, vast_cmd, workdir
from tests.test_fuzz import FUZZ, assert_refused, tree_state
from tests.vast_kit import KEY, OFFERS

REPO = Path(__file__).resolve().parents[1]
SPACE = str(REPO / "tests" / "spaces" / "e2e.yaml")
KEY_FILE = Path(".config") / "vastai" / "vast_api_key"
BOM = b"\xef\xbb\xbf"


def paths(root: Path) -> list[str]:
    """Every path under root, directories too (tree_state sees files only; an empty dir left is a trace)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


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
def test_fuzz_key_files(fuzz_vast, data):
    reset(fuzz_vast, OFFERS)
    with workdir(fuzz_vast.url, key=None) as root:
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
            assert str(root / KEY_FILE) in err and not fuzz_vast.requests  # refused before any request carried it
        assert tree_state(root) == before
        key_nowhere(root, out, err, fake=fuzz_vast)


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
def test_fuzz_offer_records(fuzz_vast, answer):
    """Offers with a field missing or mistyped are never listed, and never silently: the warning counts
    them; when none is usable the command is refused."""
    records, broken = answer
    reset(fuzz_vast)
    fuzz_vast.answer_offers = records
    with workdir(fuzz_vast.url) as root:
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
        assert not fuzz_vast.instances
        key_nowhere(root, out, err, fake=fuzz_vast)


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
def test_fuzz_vast_up_failures_leave_no_trace(fuzz_vast, step, out_kind, instances):
    """Whatever step fails, --out is as it was (a new one gone, nested parents too; an empty one empty; a
    non-empty one refused untouched) and nothing is left rented."""
    offers = [dict(o) | {"_stuck": True} for o in OFFERS[:2]]  # no box ever runs its on-start (no Ray)
    if step == "create_refused":
        for o in offers:
            o["_refuse"] = True
    if step == "second_refused":
        offers[1]["_refuse"] = True
        instances = 2
    reset(fuzz_vast, offers)
    if step == "offers_broken":
        fuzz_vast.answer_offers = [{k: v for k, v in o.items() if k != "dph_total"} for o in offers]
    url = f"http://127.0.0.1:{closed_port()}" if step == "offers_unreachable" else fuzz_vast.url
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
            assert "--out exists and is not empty" in err and not fuzz_vast.requests
        assert tree_state(root) == before and paths(root) == listing, (paths(root), stdout)
        assert not fuzz_vast.instances
        if "created from offer" in stdout:  # something was rented: its end and its cost are said
            assert "destroyed (launch failed)" in stdout and "cost: $" in stdout, stdout
        key_nowhere(root, stdout, err, fake=fuzz_vast)
