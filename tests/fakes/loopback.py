"""Serving a fake vendor: its ASGI app under uvicorn on 127.0.0.1 only, in a thread of the test process
(or in the foreground of a process of its own), with scripted hangs ended at once on stop."""

from __future__ import annotations

import socket
import threading
import time
from types import FrameType
from typing import Any, Self

import uvicorn

HOST = "127.0.0.1"


def bind_loopback(host: str = HOST, port: int = 0) -> socket.socket:
    """A listening socket on loopback (port 0: any free port); other hosts are refused."""
    if host not in ("127.0.0.1", "localhost"):
        raise ValueError(f"fake vendor servers listen on loopback only, not {host!r}")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    sock.listen(1024)
    return sock


class StoppableServer(uvicorn.Server):
    """uvicorn that sets `stopping` when asked to exit, so a fake's scripted hangs and latencies end."""

    def __init__(self, app: Any, stopping: threading.Event, *, log_level: str = "warning") -> None:
        super().__init__(
            uvicorn.Config(
                app,
                log_level=log_level,
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=2,
                timeout_keep_alive=30,
            )
        )
        self._stopping = stopping

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._stopping.set()
        super().handle_exit(sig, frame)


class ThreadedServer:
    """`StoppableServer` in a daemon thread: `port = server.start()`, then `server.stop()`."""

    def __init__(
        self, app: Any, stopping: threading.Event, *, name: str, port: int = 0, log_level: str = "warning"
    ) -> None:
        self._server = StoppableServer(app, stopping, log_level=log_level)
        self._stopping = stopping
        self._name = name
        self._port = port
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        sock = bind_loopback(HOST, self._port)
        port = int(sock.getsockname()[1])
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"{self._name}-{port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the {self._name} server did not start")
            time.sleep(0.01)
        return port

    def stop(self) -> None:
        self._stopping.set()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._thread = None


class LoopbackFake:
    """What every in-process fake vendor does besides speaking its API: serve on loopback from a thread,
    stop, and be scripted. A subclass sets `state` (with `stopping`, a failure queue, `configure`,
    `reset` and `transcript_for`) before calling `__init__`, and builds its ASGI app in `app()`."""

    name = "fake-vendor"
    state: Any

    def __init__(self, *, port: int = 0, log_level: str = "warning") -> None:
        self._port = port
        self._log_level = log_level
        self._server: ThreadedServer | None = None
        self.port = 0

    def app(self) -> Any:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> Self:
        self._server = ThreadedServer(
            self.app(), self.state.stopping, name=self.name, port=self._port, log_level=self._log_level
        )
        self.port = self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail(self, *failures: Any) -> None:
        """Queue failures, used one per request in order (after any already queued)."""
        self.state.add_failures(failures)

    def pending_failures(self) -> list[Any]:
        return list(self.state.pending_failures())

    def configure(self, **changes: Any) -> Any:
        return self.state.configure(**changes)

    def reset(self) -> None:
        self.state.reset()

    @property
    def transcript_for(self) -> Any:
        return self.state.transcript_for

    @transcript_for.setter
    def transcript_for(self, fn: Any) -> None:
        self.state.transcript_for = fn
