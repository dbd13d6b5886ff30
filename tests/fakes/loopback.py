"""Serving a fake vendor: its ASGI app under uvicorn on 127.0.0.1 only, in a thread of the test process
(or in the foreground of a process of its own), with scripted hangs ended at once on stop; and the
state every fake vendor keeps (config, scripted failures, recorded requests), written once here."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time
import wave
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, Generic, Self, TypeVar

import uvicorn
from pydantic import BaseModel

HOST = "127.0.0.1"

ConfigT = TypeVar("ConfigT", bound=BaseModel)
FailureT = TypeVar("FailureT", bound=BaseModel)
RequestT = TypeVar("RequestT", bound=BaseModel)


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
    stop, and be scripted. A subclass sets `state` (a `FakeVendorState` with a `transcript_for`) before
    calling `__init__`, and builds its ASGI app in `app()`."""

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

    @property
    def base_url(self) -> str:
        """What a provider is given as its base URL (the vendor's API root)."""
        return self.url

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


class FakeVendorState(Generic[ConfigT, FailureT, RequestT]):
    """What a fake's server shares with its controller, the part every vendor has (thread-safe: the
    server runs in its own thread). A subclass adds its own fields (and its `transcript_for`, whose
    signature is the vendor's) and restores them in `_reset`.

    `RequestT` must take `index` and `received_at`: `record(**fields)` numbers and stamps each request.
    A fake with several endpoints gives its failures an `endpoint` field and asks
    `next_failure(endpoint)`; the queue stays one, so `pending_failures()` keeps the order they came in.
    """

    def __init__(self, config: ConfigT, request_model: type[RequestT]) -> None:
        self.initial_config = config
        self.config = config.model_copy()
        self.stopping = threading.Event()
        self.max_in_flight = 0
        self._request_model = request_model
        self._lock = threading.Lock()
        self._failures: deque[FailureT] = deque()
        self._requests: list[RequestT] = []
        self._in_flight = 0

    def reset(self) -> None:
        """Back to the start-up config, with no failures, requests or counts (and `_reset`'s extras)."""
        with self._lock:
            self.config = self.initial_config.model_copy()
            self._failures.clear()
            self._requests.clear()
            self._in_flight = self.max_in_flight = 0
            self._reset()

    def _reset(self) -> None:
        """A subclass's own fields back to their start (called by `reset`, holding the lock)."""

    def configure(self, **changes: Any) -> ConfigT:
        """A partial update, validated as a whole (so a bad value raises and leaves the config as it was)."""
        with self._lock:
            self.config = type(self.config).model_validate({**self.config.model_dump(), **changes})
            return self.config

    def add_failures(self, failures: Iterable[FailureT], *, replace: bool = False) -> None:
        with self._lock:
            if replace:
                self._failures.clear()
            self._failures.extend(failures)

    def next_failure(self, endpoint: str | None = None) -> FailureT | None:
        """The first queued failure (for `endpoint` when given; those for others stay queued, in order)."""
        with self._lock:
            for i, failure in enumerate(self._failures):
                if endpoint is None or getattr(failure, "endpoint", None) == endpoint:
                    del self._failures[i]
                    return failure
            return None

    def pending_failures(self) -> list[FailureT]:
        with self._lock:
            return list(self._failures)

    def record(self, **fields: Any) -> RequestT:
        """Store a request. The stored object is returned, so a `status` set later shows in `requests()`."""
        with self._lock:
            recorded = self._request_model(index=len(self._requests), received_at=time.time(), **fields)
            self._requests.append(recorded)
            return recorded

    def requests(self) -> list[RequestT]:
        with self._lock:
            return [r.model_copy() for r in self._requests]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    @contextmanager
    def tracking(self) -> Iterator[None]:
        """Count the request as in flight while inside (`max_in_flight`: the most at once)."""
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    async def sleep(self, seconds: float) -> None:
        """Sleep, but stop early when the server shuts down (so hangs never block shutdown)."""
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set() and (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.05))


def wav_seconds(data: bytes) -> float | None:
    """The duration of a WAV upload, or None when it is not a readable WAV (the fakes measure no other)."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            rate = w.getframerate()
            return w.getnframes() / rate if rate > 0 else None
    except (wave.Error, EOFError):
        return None
