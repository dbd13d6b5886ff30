"""Processes and ports: start detached, recognise our own pids, stop them, probe readiness."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import httpx

from stt_devstack.state import Component, StackError

HOST = "127.0.0.1"

# A short-lived Python parent starts the server in its own session and exits, so the server is
# nobody's child: it outlives `up`, and a test process never has to reap it (no zombies, no
# "subprocess still running" warnings). A shell `cmd &` would do the same but ignores SIGINT in
# the child.
_LAUNCHER = (
    "import subprocess, sys\n"
    "with open(sys.argv[1], 'ab') as log:\n"
    "    p = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=log,"
    " start_new_session=True)\n"
    "print(p.pid)\n"
)


async def spawn_detached(
    name: str, port: int, argv: Sequence[str], *, env: Mapping[str, str], log_path: Path
) -> Component:
    """Start `argv` detached with stdout+stderr appended to `log_path`; returns its record."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    launcher = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _LAUNCHER,
        str(log_path),
        *argv,
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await launcher.communicate()
    if launcher.returncode != 0:
        raise StackError(f"could not start {argv[0]}: {err.decode(errors='replace').strip()}")
    pid = int(out)
    return Component(name=name, port=port, pid=pid, start_time=process_start_time(pid))


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # fields after "pid (comm) "
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def is_running(component: Component) -> bool:
    """True when the recorded pid is alive and is still the process we started."""
    if component.pid is None:
        return False
    started = process_start_time(component.pid)
    return started is not None and started == component.start_time


async def terminate(component: Component, *, sig: signal.Signals, timeout_seconds: float = 15.0) -> None:
    """Send `sig`, wait for the process to go, then SIGKILL it. Never signals a recycled pid."""
    if component.pid is None or not is_running(component):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(component.pid, sig)
    if await _wait_gone(component, timeout_seconds):
        return
    print(f"  {component.name} (pid {component.pid}) ignored {sig.name}; sending SIGKILL", file=sys.stderr)
    with contextlib.suppress(ProcessLookupError):
        os.kill(component.pid, signal.SIGKILL)
    if not await _wait_gone(component, 5.0):
        raise StackError(f"{component.name} (pid {component.pid}) survived SIGKILL")


async def _wait_gone(component: Component, timeout_seconds: float) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if not is_running(component):
            return True
        await asyncio.sleep(0.05)
    return not is_running(component)


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port (or on every address at that port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def require_free_ports(ports: Mapping[str, int]) -> None:
    taken = [f"{port} ({what})" for what, port in ports.items() if not port_is_free(port)]
    if taken:
        raise StackError(
            f"port(s) {', '.join(taken)} on {HOST} already in use by a process this stack did not "
            "start; stop it or choose another --port-base"
        )


async def tcp_is_open(port: int, timeout_seconds: float = 1.0) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout_seconds)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def http_ok(url: str, timeout_seconds: float = 2.0) -> bool:
    """GET `url` answers 200. `trust_env=False`: loopback probes must never go through a proxy."""
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=timeout_seconds) as client:
            response = await client.get(url)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


async def wait_ready(
    check: Callable[[], Awaitable[bool]],
    *,
    what: str,
    timeout_seconds: float,
    process: Component | None = None,
    log_path: Path | None = None,
) -> None:
    """Poll `check` until it passes; fail early if the process we started has exited."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        if await check():
            return
        if process is not None and not is_running(process):
            reason = f"{what} exited before it was ready"
            break
        if time.monotonic() > deadline:
            reason = f"{what} not ready after {timeout_seconds:.0f} s"
            break
        await asyncio.sleep(0.1)
    if log_path is not None:
        reason += f"; last lines of {log_path}:\n{log_tail(log_path)}"
    raise StackError(reason)


def free_port() -> int:
    """A port the kernel says is free now (for processes whose port nobody needs to know in advance)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port
