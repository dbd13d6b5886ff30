"""The delivery loop: polls due deliveries, sends them, records every attempt, schedules retries.

Why a table and not retry topics: a retry due in 8 hours is a row with `next_attempt_at`, not a
message parked in a topic whose consumer must sleep (and stop committing) until it is due; the same
row is the delivery log `GET /jobs/{id}/webhooks` serves, and `redeliver` is one UPDATE. The consumer
never waits for a receiver: it only inserts rows.

Several replicas (or a replica and a slow previous attempt) never send the same delivery at once:

1. **Claim** (one short transaction): `SELECT … FOR UPDATE SKIP LOCKED` picks due PENDING rows
   another replica is not claiming at this moment, and the same statement counts the attempt and
   pushes `next_attempt_at` past the attempt's deadline (`claim_seconds`): while we send, the row
   is not due for anyone else, and if we die it becomes due again by itself.
2. **Send** outside any transaction (SSRF check, signed POST, deadline).
3. **Record**: the attempt row is always written; the delivery's new state (SUCCEEDED, FAILED, or
   PENDING at the next retry time) is written only if the row is still exactly as we claimed it
   (same attempts, same claim deadline). A `redeliver` meanwhile resets it and wins.

Outcomes: any 2xx → SUCCEEDED; 410 → FAILED without retry; a URL refused by the SSRF rules or an
unsignable event → FAILED; anything else → retried after `schedule[n-1] * (1 +- jitter)` (at least
`Retry-After` on 429/503), FAILED once the schedule is spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import DeliveryStatus, WebhookAttempt, WebhookDelivery
from stt_common.logs import get_logger
from stt_notifier.delivery import AttemptResult, WebhookSender, encode_body, signature_headers
from stt_notifier.settings import NotifierSettings

log = get_logger(__name__)

DELIVERIES = Counter(
    "stt_webhook_deliveries_total",
    "Webhook delivery attempts by outcome: succeeded, retry (scheduled again), gone (410), "
    "exhausted (retries spent), rejected (URL refused or event unsignable), superseded "
    "(reset by a redeliver while in flight).",
    ["outcome"],
)
ATTEMPT_SECONDS = Histogram(
    "stt_webhook_attempt_duration_seconds",
    "Latency of one webhook attempt (DNS, connect, request, response), by result class.",
    ["result"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30),
)
IN_FLIGHT = Gauge("stt_webhook_attempts_in_flight", "Webhook attempts being sent now.")
LOOP_HEARTBEAT = Gauge(
    "stt_webhook_loop_heartbeat_timestamp_seconds", "Last time the delivery loop ticked (Unix time)."
)

_CLAIM = text(
    """
    WITH due AS (
        SELECT id, job_id FROM webhook_deliveries
        WHERE status = 'PENDING' AND next_attempt_at <= now()
        ORDER BY next_attempt_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE webhook_deliveries AS d
    SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => :claim_seconds)
    FROM due
    JOIN jobs AS j ON j.id = due.job_id
    LEFT JOIN api_keys AS k ON k.id = j.api_key_id
    WHERE d.id = due.id
    RETURNING d.id, d.job_id, d.event_id, d.url, d.payload, d.attempts, d.next_attempt_at,
              k.webhook_secret
    """
)


@dataclass(frozen=True)
class Claim:
    id: uuid.UUID
    job_id: uuid.UUID
    event_id: str
    url: str
    payload: dict[str, Any]
    attempt: int  # 1-based, in the current round
    claimed_until: datetime
    secret: str | None


class DeliveryLoop:
    def __init__(
        self,
        settings: NotifierSettings,
        sessions: async_sessionmaker[AsyncSession],
        sender: WebhookSender,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._sender = sender
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[AttemptResult]] = set()
        self._heartbeat = time.monotonic()
        self._running = False

    # -- control --------------------------------------------------------------------------------

    def wake(self) -> None:
        """Look for due deliveries now (the handler just recorded one)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def liveness(self) -> str | None:
        if not self._running:
            return "delivery loop is not running"
        age = time.monotonic() - self._heartbeat
        if age > self._settings.liveness_timeout_seconds:
            return f"delivery loop has not ticked for {age:.0f}s"
        return None

    # -- loop -----------------------------------------------------------------------------------

    async def run(self) -> None:
        self._running = True
        log.info("delivery loop started", concurrency=self._settings.webhook_concurrency)
        try:
            while not self._stopping.is_set():
                self._tick()
                free = self._settings.webhook_concurrency - len(self._tasks)
                claimed: list[Claim] = []
                if free > 0:
                    self._wake.clear()
                    try:
                        claimed = await self.claim(free)
                    except Exception:
                        log.error("claiming due deliveries failed", exc_info=True)
                for claim in claimed:
                    task = asyncio.create_task(self.deliver(claim))
                    self._tasks.add(task)
                    task.add_done_callback(self._done)
                IN_FLIGHT.set(len(self._tasks))
                if claimed and len(claimed) == free:
                    continue  # a full batch: more may be due right now
                await self._idle()
            await self._drain()
        finally:
            self._running = False
            for task in self._tasks:
                task.cancel()

    def _tick(self) -> None:
        self._heartbeat = time.monotonic()
        LOOP_HEARTBEAT.set(time.time())

    def _done(self, task: asyncio.Task[AttemptResult]) -> None:
        self._tasks.discard(task)
        IN_FLIGHT.set(len(self._tasks))
        self._wake.set()  # a slot is free
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception())

    async def _idle(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self._settings.webhook_poll_interval_seconds)

    async def _drain(self) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=self._settings.drain_timeout_seconds)
        if pending:
            log.warning("drain timeout: abandoning attempts; their claims expire and they are resent")
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # -- one delivery ---------------------------------------------------------------------------

    async def claim(self, limit: int) -> list[Claim]:
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    _CLAIM, {"limit": limit, "claim_seconds": self._settings.webhook_claim_seconds}
                )
            ).all()
            await session.commit()
        return [
            Claim(
                id=row.id,
                job_id=row.job_id,
                event_id=row.event_id,
                url=row.url,
                payload=dict(row.payload or {}),
                attempt=row.attempts,
                claimed_until=row.next_attempt_at,
                secret=row.webhook_secret,
            )
            for row in rows
        ]

    async def deliver(self, claim: Claim) -> AttemptResult:
        """Send one claimed delivery and record the attempt; returns what happened."""
        attempted_at = datetime.now(UTC)
        body = encode_body(claim.payload)
        try:
            if claim.secret is None:
                raise ValueError("the job's API key no longer exists; the event cannot be signed")
            headers = signature_headers(claim.secret, claim.event_id, body)
        except ValueError as exc:
            result = AttemptResult(status_code=None, latency_ms=0.0, error=str(exc), permanent=True)
        else:
            try:
                result = await self._sender.send(claim.url, body, headers)
            except Exception as exc:  # a bug must cost one attempt, not loop the delivery for ever
                log.error("webhook attempt crashed", event_id=claim.event_id, exc_info=True)
                error = f"internal error: {exc!r}"[:500]
                result = AttemptResult(status_code=None, latency_ms=0.0, error=error)
        ATTEMPT_SECONDS.labels(result.result_class).observe(result.latency_ms / 1000)
        outcome = await self._record(claim, attempted_at, result)
        DELIVERIES.labels(outcome).inc()
        log.info(
            "webhook attempt",
            job_id=str(claim.job_id),
            event_id=claim.event_id,
            attempt=claim.attempt,
            status_code=result.status_code,
            latency_ms=result.latency_ms,
            error=result.error,
            outcome=outcome,
        )
        return result

    def retry_delay(self, attempt: int, result: AttemptResult) -> float:
        """Seconds until the next try after failed attempt number `attempt` (1-based)."""
        schedule = self._settings.webhook_retry_schedule_seconds
        delay = schedule[min(attempt, len(schedule)) - 1]
        jitter = self._settings.webhook_retry_jitter
        if jitter:
            delay *= 1 + self._rng.uniform(-jitter, jitter)
        if result.retry_after_seconds is not None:
            delay = max(
                delay, min(result.retry_after_seconds, self._settings.webhook_retry_after_max_seconds)
            )
        return max(delay, 0.0)

    async def _record(self, claim: Claim, attempted_at: datetime, result: AttemptResult) -> str:
        values: dict[str, Any]
        if result.succeeded:
            outcome = "succeeded"
            values = {"status": DeliveryStatus.SUCCEEDED, "next_attempt_at": None}
        elif result.gone:
            outcome = "gone"
            values = {"status": DeliveryStatus.FAILED, "next_attempt_at": None}
        elif result.permanent:
            outcome = "rejected"
            values = {"status": DeliveryStatus.FAILED, "next_attempt_at": None}
        elif claim.attempt >= self._settings.webhook_max_attempts:
            outcome = "exhausted"
            values = {"status": DeliveryStatus.FAILED, "next_attempt_at": None}
        else:
            outcome = "retry"
            delay = timedelta(seconds=self.retry_delay(claim.attempt, result))
            values = {"status": DeliveryStatus.PENDING, "next_attempt_at": datetime.now(UTC) + delay}
        try:
            return await self._write(claim, attempted_at, result, outcome, values)
        except IntegrityError:
            # The delivery is gone (its job was deleted while we were sending): nothing to record.
            return "superseded"

    async def _write(
        self,
        claim: Claim,
        attempted_at: datetime,
        result: AttemptResult,
        outcome: str,
        values: dict[str, Any],
    ) -> str:
        async with self._sessions() as session:
            session.add(
                WebhookAttempt(
                    delivery_id=claim.id,
                    attempted_at=attempted_at,
                    status_code=result.status_code,
                    latency_ms=result.latency_ms,
                    error=(result.error or None) and result.error[:2000],
                )
            )
            query = update(WebhookDelivery).where(
                WebhookDelivery.id == claim.id,
                WebhookDelivery.status == DeliveryStatus.PENDING,
                WebhookDelivery.attempts == claim.attempt,
                WebhookDelivery.next_attempt_at == claim.claimed_until,
            )
            if result.succeeded:
                query = query.values(**values, delivered_at=attempted_at)
            else:
                query = query.values(**values)
            changed = await session.execute(query.returning(WebhookDelivery.id))
            still_ours = changed.first() is not None
            await session.commit()
        return outcome if still_ours else "superseded"
