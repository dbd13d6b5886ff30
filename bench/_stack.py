"""What every benchmark needs: its own stack (port base 19000, own database and bucket), stages as
processes, jobs entered directly, and a place for results."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.engine import make_engine, make_sessionmaker
from stt_common.kafka import EventProducer
from stt_common.s3 import ObjectStore
from stt_common.settings import Settings
from stt_devstack.config import StackConfig
from stt_devstack.harness import Jobs, ServiceProcess
from stt_devstack.stack import stack_settings, start_infra, stop

RESULTS = Path(__file__).parent / "results"
PORT_BASE = int(os.environ.get("STT_BENCH_PORT_BASE", "19000"))


@dataclass
class Bench:
    env: dict[str, str]
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    store: ObjectStore
    jobs: Jobs
    work: Path
    started: list[ServiceProcess]

    def service(self, name: str, **overrides: str) -> ServiceProcess:
        env = {**os.environ, **self.env, "STT_LOG_LEVEL": "WARNING", **overrides}
        process = ServiceProcess(name, env, self.work).start()
        self.started.append(process)
        return process


@contextlib.asynccontextmanager
async def bench_stack() -> AsyncIterator[Bench]:
    with tempfile.TemporaryDirectory(prefix="stt-bench-") as tmp:
        work = Path(tmp)
        config = StackConfig(
            state_dir=work / "stack",
            port_base=PORT_BASE,
            database=f"stt_bench_{os.getpid()}",
            bucket="stt-bench",
            drop_database_on_stop=True,
        )
        try:
            env = await start_infra(config)
            settings = stack_settings(config, env)
            engine = make_engine(settings.database_url)
            async with (
                ObjectStore.from_settings(settings) as store,
                EventProducer(settings, client_id="bench") as producer,
            ):
                bench = Bench(
                    env,
                    settings,
                    make_sessionmaker(engine),
                    store,
                    Jobs(make_sessionmaker(engine), store, producer),
                    work,
                    [],
                )
                try:
                    yield bench
                finally:
                    for process in bench.started:
                        process.kill()
                    await engine.dispose()
        finally:
            await stop(config, purge=True)


def write_result(name: str, figures: dict[str, Any]) -> Path:
    """Print the figures and keep them (with the machine they were measured on) as JSON."""
    RESULTS.mkdir(exist_ok=True)
    record = {
        "benchmark": name,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "processor": platform.machine(),
        },
        **figures,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    return path


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of a live process (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")
