"""The stack as a whole: start infrastructure, provision it, stop it, report on it.

The CLI and the pytest fixtures call these same functions; nothing here prints secrets.
"""

from __future__ import annotations

import asyncio
import shlex
import shutil
import signal
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass

from pydantic import SecretStr

from stt_common.settings import Settings
from stt_devstack.config import StackConfig
from stt_devstack.infra import (
    ALL_SERVERS,
    INFRA,
    Server,
    database_url,
    drop_database,
    ensure_database,
    ensure_dev_api_key,
    postgres_answers,
    s3_credentials,
    stack_servers,
    write_private,
)
from stt_devstack.procs import HOST, is_running, require_free_ports, terminate, wait_ready
from stt_devstack.services import SERVICES, service_ready, start_services
from stt_devstack.state import Component, StackError, StackState

SECRET_VARIABLES = frozenset({"STT_API_KEY", "STT_S3_SECRET_ACCESS_KEY"})


async def start_infra(config: StackConfig) -> dict[str, str]:
    """Postgres, Redis, Kafka (Tansu) and S3 (SeaweedFS) up and provisioned, and Prometheus with
    `config.with_prometheus`; returns the env vars.

    Idempotent: servers recorded as ours and still running are reused, external Postgres/Redis on
    their standard ports are reused when allowed, and only what is missing is started."""
    # Imported here: alembic, aiokafka and aiobotocore take seconds to import, and `down` and
    # `status` need none of them.
    from stt_common.db import migrate
    from stt_common.kafka import ensure_topics
    from stt_common.s3 import ObjectStore

    config.state_dir.mkdir(parents=True, exist_ok=True)
    state = StackState.load(config.state_file)
    servers = await _ensure_servers(config, state, stack_servers(config))
    postgres, redis, kafka, s3 = (servers[server.name] for server in INFRA)

    if (
        await ensure_database(postgres.port, config.database)
        and config.database not in state.created_databases
    ):
        state.created_databases.append(config.database)
        state.save(config.state_file)
    url = database_url(postgres.port, config.database)
    # Alembic's env.py runs its own event loop, so it must not run on this one's thread.
    await asyncio.to_thread(migrate.upgrade, url)
    api_key = await ensure_dev_api_key(url, config.api_key_file)
    access_key, secret_key = s3_credentials(config)

    env = {
        "STT_DEVELOPMENT": "true",
        "STT_DATABASE_URL": url,
        "STT_REDIS_URL": f"redis://{HOST}:{redis.port}/0",
        "STT_KAFKA_BOOTSTRAP_SERVERS": f"{HOST}:{kafka.port}",
        "STT_KAFKA_ENABLE_IDEMPOTENCE": "false",
        "STT_S3_ENDPOINT_URL": f"http://{HOST}:{s3.port}",
        "STT_S3_BUCKET": config.bucket,
        "STT_S3_ACCESS_KEY_ID": access_key,
        "STT_S3_SECRET_ACCESS_KEY": secret_key,
        "STT_S3_REGION": "us-east-1",
        "STT_API_URL": f"http://{HOST}:{config.ingest_port}",
        "STT_API_KEY": api_key,
    }
    settings = stack_settings(config, env)
    await ensure_topics(settings)
    async with ObjectStore.from_settings(settings) as store:
        await store.ensure_bucket()
    write_private(config.env_file, render_env(env))
    return env


async def up(config: StackConfig) -> tuple[dict[str, str], dict[str, str]]:
    """`start_infra` then `start_services` (all of them): returns (env, service outcomes)."""
    env = await start_infra(config)
    return env, await start_services(config, env)


def stack_settings(config: StackConfig, env: Mapping[str, str]) -> Settings:
    """The pipeline's Settings pointed at this stack (what a service would build from the env file)."""
    return Settings(
        development=True,
        database_url=env["STT_DATABASE_URL"],
        redis_url=env["STT_REDIS_URL"],
        kafka_bootstrap_servers=env["STT_KAFKA_BOOTSTRAP_SERVERS"],
        kafka_enable_idempotence=False,
        s3_endpoint_url=env["STT_S3_ENDPOINT_URL"],
        s3_bucket=env["STT_S3_BUCKET"],
        s3_access_key_id=env["STT_S3_ACCESS_KEY_ID"],
        s3_secret_access_key=SecretStr(env["STT_S3_SECRET_ACCESS_KEY"]),
        s3_region=env["STT_S3_REGION"],
        chunks_topic_partitions=config.chunks_topic_partitions,
        topic_partitions=config.topic_partitions,
    )


async def _ensure_servers(
    config: StackConfig, state: StackState, servers: tuple[Server, ...]
) -> dict[str, Component]:
    chosen: dict[str, Component] = {}
    to_start: list[Server] = []
    for server in servers:
        recorded = state.components.get(server.name)
        if recorded is not None and is_running(recorded):
            chosen[server.name] = recorded
        elif (external := await server.find_external(config)) is not None:
            chosen[server.name] = external
        else:
            to_start.append(server)
    # Check every port first, so a conflict fails before anything was started.
    require_free_ports({label: port for server in to_start for label, port in server.ports(config).items()})
    for server in servers:
        if server.name in chosen:
            state.components[server.name] = chosen[server.name]
    state.save(config.state_file)

    async def start(server: Server) -> None:
        component = await server.start(config)
        state.components[server.name] = component
        state.save(config.state_file)
        chosen[server.name] = component

    await _gather(start(server) for server in to_start)
    await _gather(_wait_server(config, server, chosen[server.name]) for server in servers)
    return chosen


async def _wait_server(config: StackConfig, server: Server, component: Component) -> None:
    async def ready() -> bool:
        return await server.is_ready(component.port)

    await wait_ready(
        ready,
        what=server.name,
        timeout_seconds=config.ready_timeout_seconds,
        process=None if component.external else component,
        log_path=server.log_path(config),
    )


async def _gather(awaitables: Iterable[Awaitable[None]]) -> None:
    """Run concurrently; on failure report every StackError at once (the others still run to their
    end, so whatever they started is recorded and `down` can stop it)."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    errors = [result for result in results if isinstance(result, BaseException)]
    if not errors:
        return
    if all(isinstance(error, StackError) for error in errors):
        raise StackError("\n".join(str(error) for error in errors))
    raise errors[0]


async def stop(config: StackConfig, *, purge: bool = False) -> None:
    """Stop every process this tool started for `config` (services first), drop the database if
    configured to and created by us, and forget them. External servers are left alone.

    `purge` also deletes the state dir (S3 data, keys, logs) and the throwaway Postgres cluster."""
    state = StackState.load(config.state_file)
    infra_names = {server.name for server in ALL_SERVERS}
    services = [c for name, c in state.components.items() if name not in infra_names]
    await _gather(_stop_one(state, config, component, None) for component in services)

    postgres = state.components.get("postgres")
    if config.drop_database_on_stop and postgres is not None and config.database in state.created_databases:
        if await postgres_answers(postgres.port):
            await drop_database(postgres.port, config.database)
        state.created_databases.remove(config.database)
        state.save(config.state_file)

    await _gather(
        _stop_one(state, config, state.components[server.name], server)
        for server in ALL_SERVERS
        if server.name in state.components
    )
    config.env_file.unlink(missing_ok=True)
    if purge:
        shutil.rmtree(config.pg_root, ignore_errors=True)
        shutil.rmtree(config.state_dir, ignore_errors=True)


async def _stop_one(
    state: StackState, config: StackConfig, component: Component, server: Server | None
) -> None:
    if not component.external:
        await terminate(component, sig=server.stop_signal if server else signal.SIGTERM)
    state.components.pop(component.name, None)
    state.save(config.state_file)


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    port: int
    pid: int | None
    external: bool
    up: bool
    note: str = ""

    def line(self) -> str:
        pid = "external" if self.external else (str(self.pid) if self.pid else "-")
        state = "up" if self.up else "down"
        return f"{self.name:<12} {pid:>9} {self.port:>6}  {state}{'  ' + self.note if self.note else ''}"


async def status(config: StackConfig) -> list[ComponentStatus]:
    """One entry per component, each checked for real (protocol ping or GET /readyz)."""
    state = StackState.load(config.state_file)
    rows: list[ComponentStatus] = []
    for server in ALL_SERVERS:
        recorded = state.components.get(server.name)
        if recorded is None:
            if server in INFRA or config.with_prometheus:
                rows.append(
                    ComponentStatus(server.name, server.port(config), None, False, False, "not started")
                )
            continue
            continue
        alive = recorded.external or is_running(recorded)
        up = alive and await server.is_ready(recorded.port)
        rows.append(ComponentStatus(server.name, recorded.port, recorded.pid, recorded.external, up))
    for service in SERVICES:
        recorded = state.components.get(service.name)
        if recorded is None:
            note = "not started" if service.runnable() else f"no module {service.module}"
            rows.append(ComponentStatus(service.name, service.port(config), None, False, False, note))
            continue
        up = is_running(recorded) and await service_ready(service, recorded)
        rows.append(ComponentStatus(service.name, recorded.port, recorded.pid, False, up))
    return rows


def render_env(env: Mapping[str, str], *, redact: bool = False) -> str:
    """Shell-sourceable `export K=V` lines; with `redact`, secrets show only their first 6 chars."""
    lines = []
    for key, value in env.items():
        shown = value[:6] + "…" if redact and key in SECRET_VARIABLES else value
        lines.append(f"export {key}={shlex.quote(shown)}")
    return "\n".join(lines) + "\n"


def read_env_file(config: StackConfig) -> dict[str, str]:
    """The variables of `<state>/env` (written by `start_infra`)."""
    env: dict[str, str] = {}
    for line in config.env_file.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = shlex.split(value)[0] if value else ""
    return env
