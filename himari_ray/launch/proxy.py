"""One Optuna study served to many drivers through Optuna's gRPC storage proxy.

The proxy listens on 127.0.0.1 only: rented boxes reach it through an SSH reverse tunnel (`ssh -R`), so
neither it nor the study database is ever on a public port. The proxy itself has no authentication; the
loopback bind and SSH are what keep strangers out.

Optuna 5.0's public `run_grpc_proxy_server` blocks until the process ends; `launch` needs a proxy it can
stop, so it builds the same server with `optuna.storages._grpc.server.make_server` (what that function
calls). Check it when moving to another Optuna major version.
"""

from __future__ import annotations

from types import TracebackType

from himari_ray.search.study import open_storage
from himari_ray.types import UserInputError


class StudyProxy:
    """A running gRPC proxy in front of the study storage `url` (any SQLAlchemy URL) on 127.0.0.1:`port`."""

    host = "127.0.0.1"

    def __init__(self, url: str, port: int, flag: str = "--storage"):
        try:
            from optuna.storages._grpc.server import make_server
        except ImportError:  # grpcio is in the [vast] extra, not the core install
            raise UserInputError(
                f"{flag}: serving the study to boxes needs grpcio (pip install 'himari-ray[vast]')"
            ) from None
        self.port = port
        self._storage = open_storage(url, flag=flag)
        self._server = make_server(self._storage, self.host, port)

    @property
    def url(self) -> str:
        """What a driver passes as `--storage` to reach the study through this proxy."""
        return f"grpc://{self.host}:{self.port}"

    def __enter__(self) -> StudyProxy:
        self._server.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._server.stop(grace=1.0).wait()
