"""`python -m stt_maintenance run` (one pass: what the CronJob runs) or `loop [--interval S]` (`make up`).

`run` prints the pass's one-line summary (`redriven=… failed_stalled=… …`) and logs it as JSON; it
exits 0 when the pass did its work (or found another pass holding the lock), 1 when some step
failed. `loop` runs a pass every interval and serves `/healthz`, `/readyz` and `/metrics` (the
pass counters) on STT_OPS_PORT. SIGTERM/SIGINT stop at the next job boundary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from collections.abc import Sequence

from stt_common.db.engine import make_engine, make_sessionmaker, ping
from stt_common.kafka import EventProducer
from stt_common.logs import configure_logging, get_logger
from stt_common.ops import OpsServer, ReadinessCheck
from stt_common.s3 import ObjectStore
from stt_maintenance import report
from stt_maintenance.report import Summary
from stt_maintenance.settings import MaintenanceSettings
from stt_maintenance.sweep import Maintenance

log = get_logger(__name__)

SKIPPED_LINE = "maintenance: another pass holds the lock; nothing done"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stt_maintenance",
        description="Re-drive stale jobs, fail hopeless ones, delete expired jobs and keys.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="one pass, then exit (the CronJob)")
    loop = commands.add_parser("loop", help="a pass every --interval seconds, with an ops endpoint")
    loop.add_argument("--interval", type=float, default=None, help="seconds between passes")
    return parser


def _report(summary: Summary | None) -> None:
    if summary is None:
        print(SKIPPED_LINE, flush=True)
        log.info("maintenance pass skipped: the lock is held by another pass")
        return
    print(summary.line(), flush=True)
    log.info("maintenance pass", **summary.fields())


async def _serve(settings: MaintenanceSettings, command: str, interval: float) -> int:
    engine = make_engine(settings.database_url, pool_size=3)
    sessions = make_sessionmaker(engine)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        async with (
            ObjectStore.from_settings(settings) as store,
            EventProducer(settings, client_id="stt-maintenance") as producer,
        ):
            maintenance = Maintenance(settings, engine, sessions, store, producer, stopping=stopping)
            if command == "run":
                summary = await maintenance.run_pass()
                _report(summary)
                return 1 if summary is not None and summary.errors else 0
            return await _loop(settings, maintenance, interval, ping_db=lambda: ping(engine), store=store)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await engine.dispose()


async def _loop(
    settings: MaintenanceSettings,
    maintenance: Maintenance,
    interval: float,
    *,
    ping_db: ReadinessCheck,
    store: ObjectStore,
) -> int:
    heartbeat = time.monotonic()
    # A pass may take a while (many deletions); only a loop silent for much longer is stuck.
    allowed_silence = max(3 * interval, interval + 900.0)

    def liveness() -> str | None:
        age = time.monotonic() - heartbeat
        return None if age <= allowed_silence else f"no maintenance pass started for {age:.0f}s"

    ops = OpsServer(
        host=settings.ops_host,
        port=settings.ops_port,
        liveness=liveness,
        readiness={"postgres": ping_db, "s3": store.ping},
    )
    await ops.start()
    log.info("maintenance loop", interval_s=interval)
    try:
        while not maintenance.stopping.is_set():
            heartbeat = time.monotonic()
            try:
                _report(await maintenance.run_pass())
            except Exception:
                report.RUNS.labels("error").inc()
                log.error("maintenance pass failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(maintenance.stopping.wait(), interval)
    finally:
        await ops.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = MaintenanceSettings()
    configure_logging(settings.log_level, service=settings.service_name)
    interval = settings.maintenance_interval_seconds
    if args.command == "loop" and args.interval is not None:
        if args.interval <= 0:
            raise SystemExit("--interval must be > 0")
        interval = args.interval
    return asyncio.run(_serve(settings, args.command, interval))
