"""Where the stack lives: one state directory and one port base, everything else derived from them.

Every port is `port_base + offset` so two stacks (a developer's `make up` and a test session) can run
side by side by choosing different bases.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Offsets from the port base. SeaweedFS HTTP ports also take `port + GRPC_OFFSET` for gRPC.
# Keep bases below 22000 so every port stays under Linux's ephemeral range (32768+): there an
# outgoing connection may hold a port at random just as a server wants it.
INGEST_HTTP = 0
INGEST_OPS = 100
KAFKA = 92
PROMETHEUS = 90
REDIS = 379
POSTGRES = 432
S3 = 333
SEAWEED_HTTP = {
    "s3": 333,
    "master": 334,
    "volume": 335,
    "filer": 336,
    "iceberg": 337,
    "lance": 338,
    "admin": 339,
}
SEAWEED_WITH_GRPC = ("s3", "master", "volume", "filer", "admin")
GRPC_OFFSET = 10000

EXTERNAL_POSTGRES_PORT = 5432
EXTERNAL_REDIS_PORT = 6379

_MAX_OFFSET = GRPC_OFFSET + max(SEAWEED_HTTP.values())
_DATABASE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class StackConfig:
    """One local stack. Tests use their own state dir, port base, database and bucket."""

    state_dir: Path
    port_base: int = 18000
    database: str = "stt"
    bucket: str = "stt"
    reuse_postgres: bool = True
    reuse_redis: bool = True
    # Tests set this so their per-session database disappears with the stack; `make down` keeps data.
    drop_database_on_stop: bool = False
    chunks_topic_partitions: int = 12
    topic_partitions: int = 3
    ready_timeout_seconds: float = 60.0
    # A Prometheus scraping every service (the CLI's `up` turns it on; test sessions leave it off).
    with_prometheus: bool = False

    def __post_init__(self) -> None:
        if not 1024 <= self.port_base <= 65535 - _MAX_OFFSET:
            raise ValueError(
                f"port base must be between 1024 and {65535 - _MAX_OFFSET}, not {self.port_base}"
            )
        if not _DATABASE_NAME.match(self.database):
            raise ValueError(f"database name {self.database!r} must match {_DATABASE_NAME.pattern}")
        if not _BUCKET_NAME.match(self.bucket):
            raise ValueError(f"bucket name {self.bucket!r} must match {_BUCKET_NAME.pattern}")
        object.__setattr__(self, "state_dir", self.state_dir.absolute())

    # -- ports ----------------------------------------------------------------------------------

    def port(self, offset: int) -> int:
        return self.port_base + offset

    @property
    def postgres_port(self) -> int:
        return self.port(POSTGRES)

    @property
    def redis_port(self) -> int:
        return self.port(REDIS)

    @property
    def kafka_port(self) -> int:
        return self.port(KAFKA)

    @property
    def s3_port(self) -> int:
        return self.port(S3)

    @property
    def prometheus_port(self) -> int:
        return self.port(PROMETHEUS)

    @property
    def ingest_port(self) -> int:
        return self.port(INGEST_HTTP)

    def seaweed_ports(self) -> dict[str, int]:
        """Every port `weed mini` listens on, by its flag name (`s3.port`, `master.port.grpc`, ...)."""
        ports: dict[str, int] = {}
        for name, offset in SEAWEED_HTTP.items():
            flag = f"s3.port.{name}" if name in ("iceberg", "lance") else f"{name}.port"
            ports[flag] = self.port(offset)
            if name in SEAWEED_WITH_GRPC:
                ports[f"{name}.port.grpc"] = self.port(offset + GRPC_OFFSET)
        return ports

    # -- files ----------------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def env_file(self) -> Path:
        return self.state_dir / "env"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def api_key_file(self) -> Path:
        return self.state_dir / "dev_api_key"

    @property
    def s3_dir(self) -> Path:
        return self.state_dir / "s3"

    @property
    def s3_identities_file(self) -> Path:
        return self.state_dir / "s3-identities.json"

    @property
    def redis_dir(self) -> Path:
        return self.state_dir / "redis"

    @property
    def prometheus_dir(self) -> Path:
        """`prometheus.yml` and the TSDB (`data/`)."""
        return self.state_dir / "prometheus"

    @property
    def pg_root(self) -> Path:
        """Directory of the throwaway Postgres cluster (`data/` and `postgres.log` inside).

        Postgres refuses to run as root, so as root it runs as the `postgres` user, which may not be
        able to enter the state dir (pytest's tmp dirs are 0700): then the cluster lives in the
        system temp dir under a name derived from the state dir."""
        if os.geteuid() != 0:
            return self.state_dir / "pg"
        digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"stt-devstack-pg-{digest}"

    def log_file(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"
