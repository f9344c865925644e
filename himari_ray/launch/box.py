"""Where a launched search runs: a `Box` runs shell commands, copies results back and opens the tunnel that
lets the box reach the study proxy on this machine. `SSHBox` is a rented Vast instance reached over SSH;
the tests use a local stand-in with the same interface (the box is a directory and local processes).

Paths on a box are relative to its home directory, so one on-start script serves both.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Protocol

#: Where the on-start script keeps everything on a box (relative to $HOME).
BOX_DIR = "himari"


class Tunnel(Protocol):
    def close(self) -> None: ...


class Box(Protocol):
    """One machine running one search."""

    name: str

    def run(self, command: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run `command` with bash in the box's home directory; never raises for a non-zero exit."""
        ...

    def pull(self, remote: str, local: Path) -> None:
        """Copy the directory `remote` (relative to the box's home) into `local`."""
        ...

    def forward(self, remote_port: int, local_port: int) -> Tunnel:
        """Make the box's 127.0.0.1:`remote_port` reach this machine's 127.0.0.1:`local_port`."""
        ...


class _ProcessTunnel:
    def __init__(self, proc: subprocess.Popen[bytes]):
        self._proc = proc

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()


class SSHBox:
    """A Vast instance over SSH (root, the instance's mapped SSH port; your key is in your Vast account)."""

    def __init__(self, host: str, port: int, user: str = "root", key: str | None = None):
        self.name = f"{user}@{host}:{port}"
        self._host, self._port, self._user = host, port, user
        self._opts = [
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=accept-new",  # a fresh box has a fresh host key
            "-o", "ConnectTimeout=10",
            "-o", "ServerAliveInterval=15",
            *(["-i", key] if key else []),
        ]  # fmt: skip

    def _ssh(self, *extra: str) -> list[str]:
        return ["ssh", *self._opts, "-p", str(self._port), *extra, f"{self._user}@{self._host}"]

    def run(self, command: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [*self._ssh(), "bash", "-lc", _quote(command)], capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess([], 124, "", f"ssh {self.name}: no answer within {timeout:.0f} s")
        except FileNotFoundError:
            return subprocess.CompletedProcess([], 127, "", "ssh: not installed on this machine")

    def pull(self, remote: str, local: Path) -> None:
        # tar over ssh: needs nothing on either side that a Linux box lacks (rsync often is missing)
        local.mkdir(parents=True, exist_ok=True)
        with subprocess.Popen([*self._ssh(), "tar", "czf", "-", "-C", remote, "."], stdout=subprocess.PIPE) as src:
            untar = subprocess.run(["tar", "xzf", "-", "-C", str(local)], stdin=src.stdout, capture_output=True)
        if src.returncode != 0 or untar.returncode != 0:
            raise RuntimeError(f"pull {self.name}:{remote}: failed ({untar.stderr.decode(errors='replace').strip()})")

    def forward(self, remote_port: int, local_port: int) -> Tunnel:
        # -R binds the box's loopback only (sshd's GatewayPorts default): nothing public on either side.
        proc = subprocess.Popen(
            [*self._ssh("-N", "-o", "ExitOnForwardFailure=yes", "-R", f"127.0.0.1:{remote_port}:127.0.0.1:{local_port}")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return _ProcessTunnel(proc)


def _quote(command: str) -> str:
    return "'" + command.replace("'", "'\"'\"'") + "'"
