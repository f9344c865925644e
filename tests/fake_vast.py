"""A local stand-in for Vast.ai: its HTTP endpoints on 127.0.0.1, and "instances" that are a directory and
the local processes of their on-start script. Test-only fields on an offer: `_refuse` (creation answers
400), `_stuck` (the instance never leaves `loading`, like an image pull that hangs); `answer_offers` makes the
offer search answer exactly what a test gives it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil


class FakeVast:
    def __init__(self, root: Path, offers: list[dict[str, Any]], api_key: str, box_env: dict[str, str] | None = None):
        self.root, self.offers, self.api_key = Path(root), offers, api_key
        self.box_env = box_env or {}
        self.instances: dict[int, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.fail_next = 0  # answer this many of the next requests with 503, as Vast does at busy times
        #: When set, the offer search answers these as they are, unfiltered: what a server whose records lack
        #: or mistype fields would send (the search itself could not compare them).
        self.answer_offers: list[Any] | None = None
        self._next = 7000
        self._tag = uuid.uuid4().hex[:8]  # marks the processes of our boxes (and no one else's)
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                fake.requests.append((method, self.path, dict(self.headers)))
                if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                    return self._answer(401, {"success": False, "error": "auth_error", "msg": "invalid api key"})
                if fake.fail_next > 0:
                    fake.fail_next -= 1
                    return self._answer(503, {"success": False, "error": "unavailable", "msg": "try again later"})
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else {}
                code, answer = fake.route(method, self.path, body)
                self._answer(code, answer)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_PUT(self) -> None:
                self._handle("PUT")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    # --- the API -------------------------------------------------------------------------------------------
    def route(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        parsed = urllib.parse.urlparse(path)
        parts = [p for p in parsed.path.split("/") if p]  # api, v0, ...
        if method == "GET" and parts[2:] == ["bundles"]:
            if self.answer_offers is not None:
                return 200, {"offers": self.answer_offers}
            q = json.loads(urllib.parse.parse_qs(parsed.query)["q"][0])
            return 200, {"offers": [self._public(o) for o in self._search(q)]}
        if method == "PUT" and parts[2] == "asks":
            return self._create(int(parts[3]), body)
        if method == "GET" and parts[2:] == ["instances"]:
            with self._lock:
                return 200, {"instances": [self._listing(i) for i in self.instances.values()]}
        if method == "DELETE" and parts[2] == "instances":
            iid = int(parts[3])
            with self._lock:
                inst = self.instances.pop(iid, None)
            if inst is None:
                return 404, {"success": False, "error": "no_such_instance", "msg": f"instance {iid} not found"}
            self._kill(iid)
            return 200, {"success": True}
        return 404, {"success": False, "error": "not_found", "msg": path}

    def _search(self, q: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for o in self.offers:
            ok = True
            for field, cond in q.items():
                if field in ("order", "type", "limit"):
                    continue
                value = o.get(field)
                for op, want in cond.items():
                    ok &= value is not None and {
                        "eq": lambda v, w: v == w,
                        "gte": lambda v, w: v >= w,
                        "lte": lambda v, w: v <= w,
                    }[op](value, want)
            if ok:
                out.append(o)
        return sorted(out, key=lambda o: o["dph_total"])[: q.get("limit", 64)]

    @staticmethod
    def _public(o: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in o.items() if not k.startswith("_")}

    def _create(self, offer_id: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        offer = next((o for o in self.offers if o["id"] == offer_id), None)
        if offer is None:
            return 404, {"success": False, "error": "no_such_ask", "msg": f"offer {offer_id} not found"}
        if offer.get("_refuse"):
            return 400, {"success": False, "error": "invalid_args", "msg": "this offer is no longer available"}
        with self._lock:
            iid = self._next
            self._next += 1
            box = self.root / f"box-{iid}"
            box.mkdir(parents=True)
            (box / "onstart.sh").write_text(body["onstart"])
            inst = {"id": iid, "label": body["label"], "offer": offer, "dir": box, "status": "loading", "body": body}
            self.instances[iid] = inst
        if not offer.get("_stuck"):
            env = {**os.environ, **self.box_env, "HOME": str(box), "HIMARI_FAKE_BOX": f"{self._tag}-{iid}"}
            inst["proc"] = subprocess.Popen(
                ["bash", str(box / "onstart.sh")], cwd=box, env=env, start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            inst["status"] = "running"
        return 200, {"success": True, "new_contract": iid}

    def _listing(self, inst: dict[str, Any]) -> dict[str, Any]:
        o = inst["offer"]
        return {
            "id": inst["id"], "label": inst["label"], "actual_status": inst["status"], "intended_status": "running",
            "gpu_name": o["gpu_name"], "num_gpus": o["num_gpus"], "dph_total": o["dph_total"],
            "ssh_host": "127.0.0.1", "ssh_port": 0, "box_dir": str(inst["dir"]),
        }  # fmt: skip

    # --- what the tests do to it ---------------------------------------------------------------------------
    def die(self, iid: int) -> None:
        """The host lost the box: its processes end, Vast reports it exited."""
        self._kill(iid)
        with self._lock:
            self.instances[iid]["status"] = "exited"

    def _kill(self, iid: int) -> None:
        marker = f"{self._tag}-{iid}"
        for p in psutil.process_iter():
            try:
                if p.environ().get("HIMARI_FAKE_BOX") == marker:
                    p.send_signal(signal.SIGKILL)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue

    def stop(self) -> None:
        for iid in list(self.instances):
            self._kill(iid)
        self.server.shutdown()


class _Relay:
    """What `ssh -R` does, on one machine: accept on 127.0.0.1:listen_port, pipe each connection to
    127.0.0.1:target_port."""

    def __init__(self, listen_port: int, target_port: int):
        self._sock = socket.create_server(("127.0.0.1", listen_port))
        self._target = target_port
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._sock.close()


class LocalBox:
    """The `Box` interface over a fake instance: commands run locally with HOME at the instance's dir."""

    def __init__(self, instance: dict[str, Any], env: dict[str, str]):
        self.dir = Path(instance["box_dir"])
        self.name = f"local box {self.dir.name}"
        self._env = {**os.environ, **env, "HOME": str(self.dir)}

    def run(self, command: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command], cwd=self.dir, env=self._env, capture_output=True, text=True, timeout=timeout
        )

    def pull(self, remote: str, local: Path) -> None:
        shutil.copytree(self.dir / remote, local, dirs_exist_ok=True)

    def forward(self, remote_port: int, local_port: int) -> _Relay:
        return _Relay(remote_port, local_port)
