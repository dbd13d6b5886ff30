"""Chaos driver: a private stack, every stage a real OS process, jobs submitted through ingest's real
HTTP API, and faults injected on a fixed seed. After each scenario the invariants are read back from
the database, S3 and the webhook receiver's log.

    STT_CHAOS=full PYTHONPATH=. .venv/bin/python -m tests.chaos.driver [scenario ...]

The promise checked: a job accepted with 202 ends exactly once (one result, one delivered webhook per
event) whatever dies along the way. Only the STT vendor is faked (tests/fakes/openai_server.py, fixed
latency), so a restarted transcriber is ready in seconds and 2 cores suffice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from aiokafka import AIOKafkaConsumer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.applications import Starlette
from starlette.routing import Route

from stt_common.db.engine import make_engine, make_sessionmaker
from stt_common.kafka import ensure_topics
from stt_common.messages import Topic
from stt_common.s3 import ObjectStore
from stt_common.settings import Settings
from stt_devstack.config import StackConfig
from stt_devstack.harness import ServiceProcess, stop_services, wait_until
from stt_devstack.infra import INFRA, s3_credentials, tansu_binary
from stt_devstack.procs import HOST, free_port, spawn_detached, terminate
from stt_devstack.stack import stack_settings, start_infra, stop
from stt_devstack.state import StackState
from stt_ingest.keys import create_key
from tests.fakes.openai_server import FakeOpenAIProcess
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.fixtures.audio import espeak_wav, librivox_wavs, varied_sentences

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
PORT_BASE = int(os.environ.get("STT_CHAOS_PORT_BASE", "17000"))
SEED = int(os.environ.get("STT_CHAOS_SEED", "20261206"))
KEYS = 3  # API keys (tenants) the clients submit with, in turn
VENDOR_KEY = "sk-chaos-0f4e9b2c7d1a"  # the fake vendor accepts any key; the log scan looks for this one
CHUNK_SECONDS = 11.0  # the chunker's minimum is >10 s: ~35 s of speech makes 3 chunks
LEASE_SECONDS = 6.0
REKEY_AFTER = 15.0  # seconds of 409 idempotency_in_progress before a client tries a new key
CRASH_BACKOFF = 3.0  # seconds before a stage that exited on its own is started again

# Stages the kill driver may SIGKILL; two transcribers so one can take over from the other.
REPLICAS = {"ingest": 1, "chunker": 1, "transcriber": 2, "merger": 1, "notifier": 1, "maintenance": 1}


@dataclass(frozen=True)
class Scale:
    jobs: int  # submissions in the soak
    other_jobs: int  # submissions in every other scenario
    kill_every: tuple[float, float]  # seconds between two kills, drawn uniformly
    kills: int  # most kills in the soak
    terminal_bound: float  # liveness: every accepted job terminal within this after the last submit


SCALES = {
    "short": Scale(jobs=6, other_jobs=3, kill_every=(1.5, 3.0), kills=3, terminal_bound=100),
    "full": Scale(jobs=60, other_jobs=16, kill_every=(2.0, 6.0), kills=30, terminal_bound=420),
}


def scale() -> Scale:
    return SCALES["full" if os.environ.get("STT_CHAOS") == "full" else "short"]


# -- the stack ------------------------------------------------------------------------------------


class Receiver:
    """tests/fakes/webhook_receiver.py's receiver (it verifies signatures and logs every request) on
    a fixed port, so it can be stopped and started again at the same URL."""

    def __init__(self) -> None:
        self.state = WebhookReceiver(host=HOST, port=free_port())
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        app = Starlette(routes=[Route("/{path:path}", self.state._handle, methods=["POST"])])
        config = uvicorn.Config(app, host=HOST, port=self.state.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        server = self._server
        await wait_until(lambda: server.started, timeout=10, what="webhook receiver", interval=0.05)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._server = self._task = None


@dataclass
class Submission:
    n: int
    idempotency_key: str
    webhook_path: str | None
    long: bool
    key: int  # which of the stack's API keys submits it
    codes: list[int | str] = field(default_factory=list)  # every answer, "conn" for no answer
    job_id: uuid.UUID | None = None
    accepted_at: float | None = None
    cancelled: bool = False  # the API answered 202 to a cancel
    deleted: bool = False  # the API answered 204 to a delete
    abandoned_keys: list[str] = field(default_factory=list)  # keys left "in progress" by a dead try


@dataclass
class Stack:
    config: StackConfig
    env: dict[str, str]
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    store: ObjectStore
    work: Path
    receiver: Receiver
    keys: list[tuple[str, str]]  # (API key, its webhook secret): the clients are several tenants
    provider: str = "openai"  # the fake vendor; "local" runs the embedded model on the CPU
    services: dict[str, list[ServiceProcess]] = field(default_factory=dict)
    restarts: int = 0
    crashes: int = 0  # stage processes that exited without being killed
    backoff: dict[tuple[str, int], float] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)  # what the driver did, for the report

    def note(self, what: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {what}")
        print(f"  chaos: {what}", file=sys.stderr, flush=True)

    def service_env(self, name: str) -> dict[str, str]:
        env = {**os.environ, **self.env, "STT_LOG_LEVEL": "INFO"}
        if name == "ingest":
            env["STT_HTTP_PORT"] = str(self.config.ingest_port)
        return env

    def new_process(self, name: str, **overrides: str) -> ServiceProcess:
        args = ("loop",) if name == "maintenance" else ()
        env = {**self.service_env(name), **overrides}
        return ServiceProcess(name, env, self.work / "logs", args=args).start()

    async def start_services(self) -> None:
        for name, count in REPLICAS.items():
            self.services[name] = [self.new_process(name) for _ in range(count)]
        await asyncio.gather(*(p.ready(90) for ps in self.services.values() for p in ps))

    async def supervise(self) -> None:
        """What Kubernetes does for a pod whose process ended (killed by the driver, or exited on
        its own, as a stage does when a handler keeps failing): start a new one after a back-off.
        The kill driver picks its own back-off in `backoff`; a crash gets CRASH_BACKOFF."""
        down_until: dict[tuple[str, int], float] = {}
        while True:
            await asyncio.sleep(0.25)
            for name, processes in self.services.items():
                for index, process in enumerate(processes):
                    if process.proc is None or process.proc.poll() is None:
                        continue
                    key = (name, index)
                    if key not in down_until:
                        delay = self.backoff.pop(key, None)
                        if delay is None:
                            delay = CRASH_BACKOFF
                            self.crashes += 1
                            self.note(f"{name}[{index}] exited {process.proc.returncode} on its own")
                        down_until[key] = time.monotonic() + delay
                    elif time.monotonic() >= down_until[key]:
                        del down_until[key]
                        self.restart(name, index)

    def restart(self, name: str, index: int) -> None:
        # Not waiting for /readyz: a consumer is ready once its group rebalanced, which on Tansu can
        # take ~45 s after a member died; the kill driver goes on meanwhile, as a cluster would.
        old = self.services[name][index]
        process = ServiceProcess(old.name, old.env, old.log_path.parent, module=old.module, args=old.args)
        self.services[name][index] = process.start()
        self.restarts += 1

    def all_processes(self) -> list[ServiceProcess]:
        return [p for ps in self.services.values() for p in ps]

    # -- infrastructure restarts -------------------------------------------------------------

    async def stop_server(self, name: str, sig: signal.Signals) -> None:
        state = StackState.load(self.config.state_file)
        await terminate(state.components[name], sig=sig)

    async def start_server(self, name: str) -> None:
        state = StackState.load(self.config.state_file)
        if name == "kafka":
            component = await start_broker(self.config)
        else:
            server = next(s for s in INFRA if s.name == name)
            component = await server.start(self.config)
        state.components[name] = component
        state.save(self.config.state_file)
        self.restarts += 1

    async def infra_outage(
        self, name: str, down_seconds: float, sig: signal.Signals = signal.SIGKILL
    ) -> None:
        self.note(f"{name}: {sig.name}, down for {down_seconds:.0f} s")
        await self.stop_server(name, sig)
        await asyncio.sleep(down_seconds)
        await self.start_server(name)
        self.note(f"{name}: restarted")


BROKER_BUCKET = "tansu"


async def start_broker(config: StackConfig) -> Any:
    """Tansu with storage that survives its restart. The devstack's broker is in-memory, which a
    restart empties (topics, messages, committed offsets). This Tansu build has two engines, memory
    and S3 (postgres, sqlite and slatedb are compiled out: `FeatureNotEnabled`), so it keeps its log
    in the stack's SeaweedFS, bucket `tansu`. Consequence: scenario (d) takes the broker's storage
    away too, as it would in a deployment on the same object store."""
    access_key, secret_key = s3_credentials(config)
    listener = f"tcp://{HOST}:{config.kafka_port}"
    argv = [str(tansu_binary()), "broker", "--listener-url", listener, "--advertised-listener-url", listener]
    argv += ["--storage-engine", f"s3://{BROKER_BUCKET}/"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "STORAGE_", "LISTENER_"))}
    env |= {
        "AWS_ENDPOINT": f"http://{HOST}:{config.s3_port}",
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }
    return await spawn_detached("kafka", config.kafka_port, argv, env=env, log_path=config.log_file("kafka"))


@contextlib.asynccontextmanager
async def chaos_stack(scenario: str) -> AsyncIterator[Stack]:
    with tempfile.TemporaryDirectory(prefix=f"stt-chaos-{scenario}-") as tmp:
        work = Path(tmp)
        (work / "logs").mkdir()
        # Our own Postgres and Redis (never the machine's): the scenarios restart them.
        config = StackConfig(
            state_dir=work / "stack",
            port_base=PORT_BASE,
            database="stt_chaos",
            bucket="stt-chaos",
            reuse_postgres=False,
            reuse_redis=False,
            drop_database_on_stop=True,
            chunks_topic_partitions=6,
        )
        vendor = FakeOpenAIProcess(latency=1.0)
        receiver = Receiver()
        engine = None
        started: Stack | None = None
        try:
            env = await start_infra(config)
            # Swap the devstack's in-memory broker for one with storage (see broker_storage).
            settings = stack_settings(config, env)
            async with ObjectStore.from_settings(
                settings.model_copy(update={"s3_bucket": BROKER_BUCKET})
            ) as s3:
                await s3.ensure_bucket()
            state = StackState.load(config.state_file)
            await terminate(state.components["kafka"], sig=signal.SIGTERM)
            state.components["kafka"] = await start_broker(config)
            state.save(config.state_file)
            await wait_until(lambda: _topics_made(settings), timeout=60, what="broker with topics")
            vendor.start()
            await receiver.start()
            env |= chaos_env(vendor.base_url)
            engine = make_engine(settings.database_url)
            sessions = make_sessionmaker(engine)
            keys = [
                await create_key(
                    sessions, name=f"chaos {n}", tenant=f"chaos-{n}", rate_limit_per_minute=100_000
                )
                for n in range(KEYS)
            ]
            async with ObjectStore.from_settings(settings) as store:
                started = Stack(
                    config,
                    env,
                    settings,
                    sessions,
                    store,
                    work,
                    receiver,
                    [(key.api_key, key.webhook_secret) for key in keys],
                )
                if scenario.endswith("_local"):
                    started.provider = "local"
                await started.start_services()
                supervisor = asyncio.create_task(started.supervise())
                try:
                    yield started
                finally:
                    supervisor.cancel()
        finally:
            if started is not None:
                for process in started.all_processes():
                    if process.proc is not None and process.proc.poll() is None:
                        process.proc.send_signal(signal.SIGCONT)  # a scenario may have left one frozen
                stop_services(started.all_processes(), timeout=10)
                keep_logs(scenario, work)
            await receiver.stop()
            vendor.stop()
            if engine is not None:
                await engine.dispose()
            await stop(config, purge=True)


async def _topics_made(settings: Settings) -> bool:
    try:
        await ensure_topics(settings)
    except Exception:  # the broker is still starting
        return False
    return True


def chaos_env(vendor_url: str) -> dict[str, str]:
    return {
        "STT_DEFAULT_PROVIDER": "openai",
        "STT_OPENAI_BASE_URL": vendor_url,
        "STT_OPENAI_API_KEY": VENDOR_KEY,
        "STT_CHUNK_SECONDS": str(CHUNK_SECONDS),
        "STT_CHUNK_OVERLAP_SECONDS": "1",
        "STT_CHUNK_SEARCH_WINDOW_SECONDS": "2",
        "STT_LEASE_SECONDS": str(LEASE_SECONDS),
        "STT_LEASE_RENEW_SECONDS": "1.5",
        "STT_KAFKA_SESSION_TIMEOUT_MS": "6000",
        # Also the rebalance timeout: how long a group waits for a killed member before moving on.
        "STT_KAFKA_MAX_POLL_INTERVAL_MS": "10000",
        "STT_DRAIN_TIMEOUT_SECONDS": "5",
        "STT_SSRF_ALLOW_NETWORKS": "127.0.0.1/32",
        "STT_WEBHOOK_ALLOW_NETWORKS": "127.0.0.1/32",
        "STT_WEBHOOK_RETRY_SCHEDULE_SECONDS": "1,2,3,4,5,5,5,5,5",
        "STT_WEBHOOK_RETRY_JITTER": "0",
        "STT_WEBHOOK_POLL_INTERVAL_SECONDS": "0.5",
        # Maintenance is part of recovery (it re-drives what a lost trigger left behind); thresholds
        # short enough to act within a scenario, long enough not to race healthy work.
        "STT_MAINTENANCE_INTERVAL_SECONDS": "5",
        "STT_STALE_PENDING_SECONDS": "60",  # an upload that died with its ingest (uploads take ~1 s here)
        "STT_STALE_UPLOADED_SECONDS": "30",
        "STT_STALE_CHUNKING_SECONDS": "30",
        "STT_STALE_TRANSCRIBING_SECONDS": "30",
        "STT_STALE_MERGING_SECONDS": "30",
        "STT_MAX_REDRIVES": "5",
        "STT_RENOTIFY_AFTER_SECONDS": "30",
        "STT_ORPHAN_CHUNKS_GRACE_SECONDS": "30",
    }


def keep_logs(scenario: str, work: Path) -> None:
    """Copy the services' logs out of the temporary directory (it is about to go) for a post-mortem."""
    target = RESULTS / "chaos-logs" / scenario
    target.mkdir(parents=True, exist_ok=True)
    for log in (work / "logs").glob("*.log"):
        (target / log.name).write_bytes(log.read_bytes())


# -- clients ----------------------------------------------------------------------------------------


class Audio:
    """Short files (one chunk), by turns synthetic (espeak) and real read speech (a LibriVox sample
    from pocketsphinx-testdata), and a long synthetic one (>= 3 chunks)."""

    def __init__(self, directory: Path) -> None:
        sentences = varied_sentences(12)
        synthetic = directory / "short.wav"
        espeak_wav(synthetic, sentences[:2], gap_seconds=0.6)
        self.short = [synthetic, *(path for path, _ in librivox_wavs()[:1])]
        self.long = directory / "long.wav"
        espeak_wav(self.long, sentences, gap_seconds=1.5)


async def _slow_body(data: bytes) -> AsyncIterator[bytes]:
    """Upload in pieces with pauses, so a kill of ingest can land mid-upload."""
    for start in range(0, len(data), 128 * 1024):
        yield data[start : start + 128 * 1024]
        await asyncio.sleep(0.05)


async def submit(stack: Stack, client: httpx.AsyncClient, sub: Submission, audio: Audio) -> None:
    """POST /transcribe as a careful client would: retry on no answer or 5xx/429 with the same
    Idempotency-Key (so a retry never makes a second job), until 202 or a 4xx."""
    path = audio.long if sub.long else audio.short[sub.n % len(audio.short)]
    api_key, webhook_secret = stack.keys[sub.key]
    fields = {"provider": stack.provider}
    if sub.webhook_path:
        fields["webhook_url"] = stack.receiver.state.hook(sub.webhook_path, secret=webhook_secret)
    deadline = time.monotonic() + 180
    stuck_since: float | None = None
    while time.monotonic() < deadline:
        boundary = uuid.uuid4().hex
        head = "".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
            for k, v in fields.items()
        )
        head += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        )
        body = head.encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        try:
            answer = await client.post(
                "/api/v1/transcribe",
                content=_slow_body(body),
                headers={
                    "X-API-Key": api_key,
                    "Idempotency-Key": sub.idempotency_key,
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                },
            )
        except httpx.HTTPError:
            sub.codes.append("conn")
            await asyncio.sleep(1)
            continue
        sub.codes.append(answer.status_code)
        if answer.status_code == 409 and "idempotency_in_progress" in answer.text:
            # The first try died mid-upload (ingest killed, or the database lost before ingest
            # could undo it): its reservation stays "in progress" for hours. Past REKEY_AFTER a
            # client gives up on that key and submits afresh.
            stuck_since = stuck_since or time.monotonic()
            if time.monotonic() - stuck_since > REKEY_AFTER:
                sub.abandoned_keys.append(sub.idempotency_key)
                sub.idempotency_key, stuck_since = f"chaos-{uuid.uuid4().hex}", None
        if answer.status_code == 202:
            sub.job_id = uuid.UUID(answer.json()["job_id"])
            sub.accepted_at = time.monotonic()
            return
        if answer.status_code < 500 and answer.status_code not in (409, 429):
            return  # refused for good: not accepted, nothing to check
        await asyncio.sleep(1)


async def api_call(stack: Stack, sub: Submission, method: str, path: str) -> int | str:
    """A call on `sub`'s job with its own key, retried while the API is away."""
    async with httpx.AsyncClient(base_url=stack.env["STT_API_URL"], timeout=30, trust_env=False) as client:
        for _ in range(30):
            try:
                answer = await client.request(method, path, headers={"X-API-Key": stack.keys[sub.key][0]})
            except httpx.HTTPError:
                await asyncio.sleep(1)
                continue
            if answer.status_code < 500:
                return answer.status_code
            await asyncio.sleep(1)
    return "gave up"


async def submit_all(
    stack: Stack,
    rng: random.Random,
    count: int,
    audio: Audio,
    *,
    long_share: float = 1 / 3,
    pace: float = 0.3,
) -> list[Submission]:
    subs = [
        Submission(
            n=n,
            idempotency_key=f"chaos-{uuid.uuid4().hex}",
            webhook_path=f"/hook/{n}" if n % 2 == 0 else None,
            long=rng.random() < long_share,
            key=n % len(stack.keys),
        )
        for n in range(count)
    ]
    async with httpx.AsyncClient(base_url=stack.env["STT_API_URL"], timeout=60, trust_env=False) as client:
        tasks = []
        for sub in subs:
            tasks.append(asyncio.create_task(submit(stack, client, sub, audio)))
            await asyncio.sleep(pace)
        await asyncio.gather(*tasks)
    return subs


# -- the kill driver --------------------------------------------------------------------------------


async def kill_driver(
    stack: Stack,
    rng: random.Random,
    *,
    kills: int,
    every: tuple[float, float],
    stages: list[str] | None = None,
) -> int:
    """SIGKILL a random stage (sometimes two at once) every few seconds, `kills` times; each is
    restarted after a random delay, as Kubernetes restarts a crashed pod. Returns kills done."""
    stages = stages or list(REPLICAS)
    done = 0
    while done < kills:
        await asyncio.sleep(rng.uniform(*every))
        victims = rng.sample(stages, 2 if rng.random() < 0.25 else 1)
        for name in victims:
            index = rng.randrange(len(stack.services[name]))
            process = stack.services[name][index]
            if process.proc is None or process.proc.poll() is not None:
                continue  # still down from an earlier kill
            delay = rng.uniform(1.0, 5.0)
            stack.backoff[(name, index)] = delay
            process.kill(signal.SIGKILL)
            done += 1
            stack.note(f"kill -9 {name}[{index}], back in {delay:.1f} s")
    return done


# -- invariants -------------------------------------------------------------------------------------


@dataclass
class Report:
    scenario: str
    jobs: int = 0  # accepted (202)
    completed: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # error_code -> count
    cancelled: int = 0
    duplicates: int = 0
    lost: int = 0
    p50_terminal_s: float | None = None
    max_terminal_s: float | None = None
    restarts: int = 0
    crashes: int = 0  # restarts of stages that exited on their own (crash-and-restart by design)
    reclaimed_chunks: int = 0  # chunks claimed more than once (a lease lapsed under a dead/frozen holder)
    submit_codes: dict[str, int] = field(default_factory=dict)
    abandoned_keys: int = 0  # Idempotency-Keys a dead upload left reserved (the client re-keyed)
    webhooks_delivered: int = 0
    webhook_redeliveries_same_id: int = 0
    dlq: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self) -> str:
        failed = ", ".join(f"{k}={v}" for k, v in sorted(self.failed.items())) or "-"
        p50 = f"{self.p50_terminal_s:.1f}" if self.p50_terminal_s is not None else "-"
        top = f"{self.max_terminal_s:.1f}" if self.max_terminal_s is not None else "-"
        return (
            f"{self.scenario:<18} {self.jobs:>4} {self.completed:>5} {failed:<22} {self.cancelled:>4} "
            f"{self.duplicates:>4} {self.lost:>4} {p50:>7} {top:>7} {self.restarts:>8} {self.crashes:>5}"
        )


HEADER = (
    f"{'scenario':<18} {'jobs':>4} {'done':>5} {'failed (reason=n)':<22} {'canc':>4} {'dup':>4} {'lost':>4} "
    f"{'p50 s':>7} {'max s':>7} {'restarts':>8} {'crash':>5}"
)


async def wait_terminal(stack: Stack, ids: list[uuid.UUID], bound: float) -> set[uuid.UUID]:
    """Wait up to `bound` seconds for every job to be terminal; returns those that are not."""
    deadline = time.monotonic() + bound
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # the database may be the thing restarting
            async with stack.sessions() as session:
                rows = await session.execute(
                    text(
                        "SELECT id FROM jobs WHERE id = ANY(:ids) "
                        "AND status IN ('COMPLETED','FAILED','CANCELLED')"
                    ),
                    {"ids": list(pending)},
                )
                pending -= {row[0] for row in rows}
        if pending:
            await asyncio.sleep(1)
    return pending


async def wait_webhooks(stack: Stack, ids: list[uuid.UUID], bound: float) -> None:
    """Wait until no delivery of these jobs is PENDING and every finished job with a webhook has one."""

    async def settled() -> bool:
        async with stack.sessions() as session:
            waiting = await session.scalar(
                text(
                    "SELECT count(*) FROM jobs j WHERE j.id = ANY(:ids) AND j.webhook_url IS NOT NULL "
                    "AND (NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.job_id = j.id) "
                    "OR EXISTS (SELECT 1 FROM webhook_deliveries d "
                    "WHERE d.job_id = j.id AND d.status = 'PENDING'))"
                ),
                {"ids": ids},
            )
            return bool(waiting == 0)

    with contextlib.suppress(AssertionError):  # what is still missing is reported by check()
        await wait_until(settled, timeout=bound, what="webhooks settled", interval=1)


async def read_dlq(settings: Settings) -> list[str]:
    """Every message on the dead-letter topics, as `topic: headers/value` lines."""
    found: list[str] = []
    consumer = AIOKafkaConsumer(
        *[topic.dlq for topic in Topic],
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"chaos-dlq-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=3000)
        for records in batches.values():
            for record in records:
                headers = {k: v.decode(errors="replace") for k, v in record.headers or ()}
                value = (record.value or b"")[:200].decode(errors="replace")
                found.append(f"{record.topic}: {headers} {value}")
    finally:
        await consumer.stop()
    return found


async def check(stack: Stack, scenario: str, subs: list[Submission], bound: float) -> Report:
    report = Report(scenario)
    report.submit_codes = dict(Counter(str(c) for sub in subs for c in sub.codes))
    if "500" in report.submit_codes:  # a dependency down is a 503 with Retry-After, never a 500
        report.problems.append(f"submissions answered 500: {report.submit_codes}")
    accepted = [sub for sub in subs if sub.job_id is not None]
    ids = [sub.job_id for sub in accepted if sub.job_id is not None]
    report.jobs = len(ids)
    for sub in subs:
        if sub.job_id is None:
            report.notes.append(f"submission {sub.n} never accepted: {sub.codes}")
        if sub.abandoned_keys:
            report.abandoned_keys += len(sub.abandoned_keys)
            report.notes.append(f"submission {sub.n}: key(s) {sub.abandoned_keys} stuck in progress")
    # 1. Liveness: every accepted job terminal within the bound.
    not_terminal = await wait_terminal(stack, ids, bound)
    report.lost = len(not_terminal)
    for job_id in not_terminal:
        report.problems.append(f"job {job_id} not terminal {bound:.0f} s after the run")
    await wait_webhooks(stack, ids, 90)

    async with stack.sessions() as session:
        jobs = {
            row.id: row
            for row in await session.execute(
                text(
                    "SELECT id, status, error_code, chunks_total, webhook_url, "
                    "extract(epoch from finished_at - created_at) AS took FROM jobs WHERE id = ANY(:ids)"
                ),
                {"ids": ids},
            )
        }
        terminal_events = Counter(
            (row.job_id, row.to_status)
            for row in await session.execute(
                text(
                    "SELECT job_id, to_status FROM job_events WHERE job_id = ANY(:ids) "
                    "AND to_status IN ('COMPLETED','FAILED','CANCELLED')"
                ),
                {"ids": ids},
            )
        )
        deliveries = list(
            await session.execute(
                text(
                    "SELECT job_id, event_id, event_type, status FROM webhook_deliveries "
                    "WHERE job_id = ANY(:ids)"
                ),
                {"ids": ids},
            )
        )
    by_status = Counter(row.status for row in jobs.values())
    report.completed = by_status["COMPLETED"]
    report.cancelled = by_status["CANCELLED"]
    report.failed = dict(Counter(row.error_code or "?" for row in jobs.values() if row.status == "FAILED"))
    report.notes.append(f"chunks per job: {dict(Counter(row.chunks_total for row in jobs.values()))}")
    took = sorted(float(row.took) for row in jobs.values() if row.took is not None)
    if took:
        report.p50_terminal_s, report.max_terminal_s = statistics.median(took), took[-1]

    # 2. Exactly one end: no job reached a terminal status twice (a second result or a re-fail).
    for job_id in ids:
        ends = {status: n for (jid, status), n in terminal_events.items() if jid == job_id}
        if sum(ends.values()) > 1:
            report.duplicates += 1
            report.problems.append(f"job {job_id} ended {sum(ends.values())} times: {ends}")
        # 3. A job the API agreed to cancel never completes.
        sub = next(s for s in accepted if s.job_id == job_id)
        if sub.cancelled and ("COMPLETED" in ends or jobs[job_id].status != "CANCELLED"):
            report.problems.append(
                f"job {job_id} was cancelled (202) but ended {jobs[job_id].status}: {ends}"
            )

    # 4. One result, every chunk in it exactly once.
    for job_id, row in jobs.items():
        if row.status != "COMPLETED" or any(s.deleted for s in accepted if s.job_id == job_id):
            continue
        try:
            document = json.loads(await stack.store.get_bytes(f"jobs/{job_id}/result/transcript.json"))
        except Exception as error:  # reported, not raised
            report.problems.append(f"job {job_id} COMPLETED without a readable result: {error!r}")
            continue
        indices = [chunk["index"] for chunk in document["chunks"]]
        if sorted(indices) != list(range(row.chunks_total or 0)):
            report.duplicates += 1
            report.problems.append(f"job {job_id}: result chunks {indices}, expected 0..{row.chunks_total}")

    # 5. Webhooks: one event per terminal status, delivered (verified, 2xx), never under two ids.
    delivered: dict[tuple[str, str], set[str]] = {}
    ids_seen: Counter[str] = Counter()
    ours = {str(job_id) for job_id in ids}
    requests = [r for r in stack.receiver.state.requests if str(r.payload.get("job_id")) in ours]
    for request in requests:
        if request.verified and 200 <= request.answered < 300:
            payload = request.payload
            delivered.setdefault((str(payload.get("job_id")), str(payload.get("type"))), set()).add(
                request.event_id
            )
            ids_seen[request.event_id] += 1
    report.webhooks_delivered = sum(len(v) for v in delivered.values())
    report.webhook_redeliveries_same_id = sum(n - 1 for n in ids_seen.values())
    for (job, kind), event_ids in delivered.items():
        if len(event_ids) > 1:
            report.duplicates += 1
            report.problems.append(
                f"job {job}: {kind} delivered under {len(event_ids)} ids {sorted(event_ids)}"
            )
    for row in deliveries:
        if row.status != "SUCCEEDED":
            report.problems.append(f"job {row.job_id}: webhook {row.event_id} ended {row.status}")
    for job_id, row in jobs.items():
        finished = row.status in ("COMPLETED", "FAILED", "CANCELLED")
        if row.webhook_url and finished and not any(job == str(job_id) for job, _ in delivered):
            report.lost += 1
            report.problems.append(f"job {job_id} ({row.status}) has a webhook and none was delivered")
    if any(not r.verified for r in requests):
        report.problems.append("the receiver got requests whose signature did not verify")

    # 6. No orphan objects: every key under jobs/ belongs to a job that exists and was not deleted.
    async with stack.sessions() as session:
        existing = {row[0] for row in await session.execute(text("SELECT id FROM jobs"))}
    for key in await stack.store.list_keys("jobs/"):
        owner = uuid.UUID(key.split("/")[1])
        if owner not in existing:
            report.problems.append(f"orphan object {key} (its job is deleted)")

    # 7. The DLQ: listed; nothing in this suite is undecodable, so anything there is explained here.
    report.dlq = await read_dlq(stack.settings)
    for line in report.dlq:
        report.problems.append(f"dead-lettered: {line}")
    # 8. No secret in any stage's log (faults make stages log their errors: none may carry one).
    for name, leaked in secrets_in_logs(stack).items():
        report.problems.append(f"the {name} appears in {', '.join(leaked)}")
    async with stack.sessions() as session:
        report.reclaimed_chunks = int(
            await session.scalar(
                text("SELECT count(*) FROM chunks WHERE job_id = ANY(:ids) AND attempts > 1"), {"ids": ids}
            )
            or 0
        )
    return report


def secrets_in_logs(stack: Stack) -> dict[str, list[str]]:
    """Every secret the stack was given, by name, with the log files that contain it."""
    secrets = {"S3 secret key": stack.env["STT_S3_SECRET_ACCESS_KEY"], "vendor key": VENDOR_KEY}
    for n, (api_key, webhook_secret) in enumerate(stack.keys):
        secrets[f"API key {n}"] = api_key
        secrets[f"webhook secret {n}"] = webhook_secret
        secrets[f"webhook signing key {n}"] = webhook_secret.removeprefix("whsec_")
    logs = {log.name: log.read_text(errors="replace") for log in (stack.work / "logs").glob("*.log")}
    found = {
        name: sorted(log for log, text in logs.items() if value in text) for name, value in secrets.items()
    }
    return {name: where for name, where in found.items() if where}


async def cancel_some(stack: Stack, rng: random.Random, subs: list[Submission]) -> None:
    """A few clients cancel their job (it may be running or already over): a job the API agreed to
    cancel must never complete."""
    for sub in subs:
        if sub.job_id is not None and rng.random() < 0.1:
            sub.cancelled = await api_call(stack, sub, "POST", f"/api/v1/jobs/{sub.job_id}/cancel") == 202


async def delete_some(stack: Stack, rng: random.Random, subs: list[Submission]) -> None:
    for sub in subs:
        if sub.job_id is not None and rng.random() < 0.15:
            sub.deleted = await api_call(stack, sub, "DELETE", f"/api/v1/jobs/{sub.job_id}") == 204


# -- scenarios --------------------------------------------------------------------------------------

Fault = Callable[[Stack, random.Random], Awaitable[None]]


async def run_with_fault(stack: Stack, scenario: str, fault: Fault, jobs: int) -> Report:
    """The common shape: submissions running while `fault` runs, then the checks."""
    rng = random.Random(f"{SEED}-{scenario}")
    restarts, crashes, events = stack.restarts, stack.crashes, len(stack.events)
    audio = Audio(stack.work)
    submitting = asyncio.create_task(submit_all(stack, rng, jobs, audio, pace=max(0.3, 8 / jobs)))
    await fault(stack, rng)
    subs = await submitting
    if scenario == "soak":
        await cancel_some(stack, rng, subs)
    report = await check(stack, scenario, subs, scale().terminal_bound)
    # Deleted jobs must leave nothing under jobs/.
    await delete_some(stack, rng, subs)
    deleted = [sub.job_id for sub in subs if sub.deleted and sub.job_id is not None]
    for job_id in deleted:
        left = await stack.store.list_keys(f"jobs/{job_id}/")
        if left:
            report.problems.append(f"deleted job {job_id} left {left}")
    report.notes.append(f"deleted {len(deleted)} finished jobs through the API")
    report.restarts = stack.restarts - restarts
    report.crashes = stack.crashes - crashes
    report.notes += stack.events[events:]
    return report


async def soak(stack: Stack, rng: random.Random) -> None:
    size = scale()
    await asyncio.sleep(1)
    done = await kill_driver(stack, rng, kills=size.kills, every=size.kill_every)
    stack.note(f"soak: {done} kills")


async def broker_restart(stack: Stack, rng: random.Random) -> None:
    await asyncio.sleep(rng.uniform(3, 6))
    await stack.infra_outage("kafka", rng.uniform(3, 8))


async def postgres_restart(stack: Stack, rng: random.Random) -> None:
    await asyncio.sleep(rng.uniform(3, 6))
    # SIGQUIT: Postgres's immediate shutdown, the nearest to a crash that still lets it restart.
    await stack.infra_outage("postgres", rng.uniform(3, 8), signal.SIGQUIT)


async def s3_outage(stack: Stack, rng: random.Random) -> None:
    await asyncio.sleep(rng.uniform(3, 6))
    await stack.infra_outage("s3", 30)


async def redis_outage(stack: Stack, rng: random.Random) -> None:
    await asyncio.sleep(rng.uniform(1, 3))
    await stack.infra_outage("redis", 10)


async def receiver_outage(stack: Stack, rng: random.Random) -> None:
    await asyncio.sleep(rng.uniform(2, 4))
    stack.note("webhook receiver: down for 20 s")
    await stack.receiver.stop()
    await asyncio.sleep(20)
    await stack.receiver.start()
    stack.note("webhook receiver: back")


async def transcriber_frozen(stack: Stack, rng: random.Random) -> None:
    """SIGSTOP a transcriber while it holds a chunk, past its lease (and its consumer session, so
    the chunk's message goes to the other transcriber), then SIGCONT: the lease must keep the woken
    one from writing a second result."""
    victim = stack.services["transcriber"][0]

    async def holds_a_chunk() -> bool:
        async with stack.sessions() as session:
            busy = await session.scalar(text("SELECT count(*) FROM chunks WHERE status = 'PROCESSING'"))
        return bool(busy)

    # Only transcriber 0 works until it holds a chunk: the other is frozen first, then thawed.
    other = stack.services["transcriber"][1]
    assert other.proc is not None
    assert victim.proc is not None
    other.proc.send_signal(signal.SIGSTOP)
    await wait_until(holds_a_chunk, timeout=120, what="a chunk being transcribed", interval=0.1)
    victim.proc.send_signal(signal.SIGSTOP)
    other.proc.send_signal(signal.SIGCONT)
    pause = LEASE_SECONDS * 2 + 4  # past the lease and the consumer session (6 s)
    stack.note(f"transcriber[0] SIGSTOP for {pause:.0f} s, holding a chunk")
    await asyncio.sleep(pause)
    victim.proc.send_signal(signal.SIGCONT)
    stack.note("transcriber[0] SIGCONT")


async def maintenance_twice(stack: Stack, rng: random.Random) -> None:
    """Two `python -m stt_maintenance run` at once, repeatedly, beside the loop: the advisory lock
    lets one act, and whatever both do must stay idempotent."""
    for _ in range(6):
        await asyncio.sleep(rng.uniform(1, 3))
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "stt_maintenance",
                "run",
                env=stack.service_env("maintenance"),
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            for _ in range(2)
        ]
        outputs = await asyncio.gather(*(p.communicate() for p in procs))
        codes = [p.returncode for p in procs]
        stack.note(f"two maintenance runs: exit {codes}")
        if any(codes):
            stack.note("maintenance output: " + " | ".join(out.decode()[-300:] for out, _ in outputs))


SCENARIOS: dict[str, tuple[Fault, bool]] = {
    # name: (fault, uses the soak's job count)
    "soak": (soak, True),
    # The same kills with the embedded model (a restarted transcriber loads it again), fewer jobs.
    "soak_local": (soak, False),
    "transcriber_sigstop": (transcriber_frozen, False),
    "broker_restart": (broker_restart, False),
    "postgres_restart": (postgres_restart, False),
    "s3_outage": (s3_outage, False),
    "redis_outage": (redis_outage, False),
    "receiver_outage": (receiver_outage, False),
    "maintenance_twice": (maintenance_twice, False),
}


async def run_scenario(name: str, stack: Stack | None = None, *, jobs: int | None = None) -> Report:
    """One scenario on `stack`, or on a private stack of its own (what `make test-chaos` does, so
    that no fault outlives its scenario)."""
    fault, is_soak = SCENARIOS[name]
    count = jobs if jobs is not None else (scale().jobs if is_soak else scale().other_jobs)
    started = time.monotonic()
    if stack is None:
        async with chaos_stack(name) as own:
            report = await run_with_fault(own, name, fault, count)
    else:
        report = await run_with_fault(stack, name, fault, count)
    report.notes.append(f"scenario took {time.monotonic() - started:.0f} s")
    return report


def write_table(reports: list[Report]) -> str:
    table = "\n".join([HEADER, *(report.row() for report in reports)])
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "chaos",
        "scale": os.environ.get("STT_CHAOS", "short"),
        "seed": SEED,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "scenarios": [report.__dict__ for report in reports],
        "table": table,
    }
    (RESULTS / "chaos.json").write_text(json.dumps(record, indent=2, default=str))
    return table


def explain(report: Report) -> str:
    lines = [f"{report.scenario}: {len(report.problems)} problem(s)", *report.problems]
    lines.append(f"  submit answers: {report.submit_codes}")
    return "\n".join(lines)


async def main(names: list[str]) -> int:
    reports = []
    for name in names or list(SCENARIOS):
        print(f"== {name}", file=sys.stderr, flush=True)
        reports.append(await run_scenario(name))
        print(explain(reports[-1]), file=sys.stderr, flush=True)
    print(write_table(reports))
    for report in reports:
        print(explain(report))
    return 1 if any(report.problems for report in reports) else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
