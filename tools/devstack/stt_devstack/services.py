"""The pipeline's own processes: one table, started only when their module exists."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from stt_devstack.config import INGEST_HTTP, INGEST_OPS, StackConfig
from stt_devstack.procs import (
    HOST,
    http_ok,
    is_running,
    log_tail,
    require_free_ports,
    spawn_detached,
    terminate,
    wait_ready,
)
from stt_devstack.state import Component, StackError, StackState


@dataclass(frozen=True)
class Service:
    name: str
    module: str  # run as `python -m <module> <args>`
    ops_offset: int  # STT_OPS_PORT = port base + this
    http_offset: int | None = None  # ingest only: STT_HTTP_PORT, which also serves /readyz
    args: tuple[str, ...] = ()
    # Readiness is GET /readyz on the HTTP port (ingest) or the ops port; None = "still running
    # after a short grace period", for a process that serves no endpoint.
    ready_path: str | None = "/readyz"

    def ops_port(self, config: StackConfig) -> int:
        return config.port(self.ops_offset)

    def port(self, config: StackConfig) -> int:
        """The port that answers readiness (and the one `status` shows)."""
        return config.port(self.http_offset if self.http_offset is not None else self.ops_offset)

    def ports(self, config: StackConfig) -> dict[str, int]:
        ports = {f"{self.name} ops": self.ops_port(config)}
        if self.http_offset is not None:
            ports[f"{self.name} http"] = config.port(self.http_offset)
        return ports

    def env(self, config: StackConfig) -> dict[str, str]:
        env = {"STT_SERVICE_NAME": self.name, "STT_OPS_PORT": str(self.ops_port(config))}
        if self.http_offset is not None:
            env["STT_HTTP_PORT"] = str(config.port(self.http_offset))
        return env

    def runnable(self) -> bool:
        """`python -m module` would work: a module, or a package with a `__main__`."""
        try:
            spec = importlib.util.find_spec(self.module)
            if spec is not None and spec.submodule_search_locations is not None:
                spec = importlib.util.find_spec(f"{self.module}.__main__")
        except ModuleNotFoundError:
            return False
        return spec is not None


SERVICES: tuple[Service, ...] = (
    Service("ingest", "stt_ingest", ops_offset=INGEST_OPS, http_offset=INGEST_HTTP),
    Service("chunker", "stt_chunker", ops_offset=101),
    Service("transcriber", "stt_transcriber", ops_offset=102),
    Service("merger", "stt_merger", ops_offset=103),
    Service("notifier", "stt_notifier", ops_offset=104),
    Service("maintenance", "stt_maintenance", ops_offset=105, args=("loop",), ready_path="/readyz"),
)
SERVICE_NAMES = tuple(service.name for service in SERVICES)
_GRACE_SECONDS = 2.0


def select_services(names: Sequence[str] | None) -> list[Service]:
    if names is None:
        return list(SERVICES)
    unknown = sorted(set(names) - set(SERVICE_NAMES))
    if unknown:
        raise StackError(f"unknown service(s) {', '.join(unknown)}; known: {', '.join(SERVICE_NAMES)}")
    return [service for service in SERVICES if service.name in names]


async def start_services(
    config: StackConfig, env: Mapping[str, str], names: Sequence[str] | None = None
) -> dict[str, str]:
    """Start (or find running) each service; returns name -> "started" | "running" | "skipped: why".

    All are spawned first and then awaited together, so a slow import in one does not serialise
    the rest. A service that does not become ready is stopped again and reported with its log."""
    state = StackState.load(config.state_file)
    outcome: dict[str, str] = {}
    waiting: list[tuple[Service, Component]] = []
    to_start: list[Service] = []
    for service in select_services(names):
        recorded = state.components.get(service.name)
        if recorded is not None and is_running(recorded):
            outcome[service.name] = "running"
            if service.ready_path is not None:
                waiting.append((service, recorded))
        elif not service.runnable():
            outcome[service.name] = f"skipped: no module {service.module}"
        else:
            to_start.append(service)
    require_free_ports({label: port for s in to_start for label, port in s.ports(config).items()})
    for service in to_start:
        process_env = {**os.environ, **env, **service.env(config)}
        argv = [sys.executable, "-m", service.module, *service.args]
        component = await spawn_detached(
            service.name, service.port(config), argv, env=process_env, log_path=config.log_file(service.name)
        )
        state.components[service.name] = component
        state.save(config.state_file)
        outcome[service.name] = "started"
        waiting.append((service, component))

    results = await asyncio.gather(
        *(_wait_service(config, service, component) for service, component in waiting), return_exceptions=True
    )
    failures = [error for error in results if isinstance(error, BaseException)]
    if failures:
        for service, component in waiting:
            if outcome[service.name] == "started" and not await service_ready(service, component):
                await terminate(component, sig=signal.SIGTERM)
                state.components.pop(service.name, None)
        state.save(config.state_file)
        raise StackError("\n".join(str(error) for error in failures))
    return outcome


async def service_ready(service: Service, component: Component) -> bool:
    if service.ready_path is None:
        return is_running(component)
    return await http_ok(f"http://{HOST}:{component.port}{service.ready_path}")


async def _wait_service(config: StackConfig, service: Service, component: Component) -> None:
    log_path = config.log_file(service.name)
    if service.ready_path is None:
        await asyncio.sleep(_GRACE_SECONDS)
        if not is_running(component):
            raise StackError(
                f"{service.name} exited right after start; last lines of {log_path}:\n{log_tail(log_path)}"
            )
        return
    await wait_ready(
        lambda: service_ready(service, component),
        what=service.name,
        timeout_seconds=config.ready_timeout_seconds,
        process=component,
        log_path=log_path,
    )
