"""The notifier in-process against the real Postgres and a local receiver: event recording,
signed delivery, retries, 410, SSRF refusal at delivery time, duplicates, several replicas."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import DeliveryStatus, JobStatus, WebhookAttempt, WebhookDelivery
from stt_common.errors import next_step
from stt_common.messages import Envelope, Topic
from stt_common.runner import Outcome
from stt_common.settings import Settings
from stt_common.ssrf import IPAddress
from stt_notifier.handler import NotifierHandler
from stt_notifier.loop import DeliveryLoop
from stt_notifier.main import make_loop
from stt_notifier.settings import NotifierSettings
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.helpers import wait_until
from tests.integration.notifier.conftest import notifier_settings
from tests.integration.notifier.factory import JobFactory, Owner, make_owner

pytestmark = pytest.mark.timeout(90)


class StubResolver:
    """Answers only the names it knows; no DNS query ever leaves the process."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.calls.append(host)
        if host not in self.names:
            raise OSError(f"stub resolver: unknown name {host}")
        return [ipaddress.ip_address(address) for address in self.names[host]]


def finished(job_id: uuid.UUID) -> Envelope:
    return Envelope.for_topic(Topic.JOBS_FINISHED, job_id, producer="test")


@contextlib.asynccontextmanager
async def running(loop: DeliveryLoop) -> AsyncIterator[DeliveryLoop]:
    task = asyncio.create_task(loop.run())
    try:
        yield loop
    finally:
        loop.stop()
        await asyncio.wait_for(task, 30)


class Notifier:
    """Handler + delivery loop wired like `main.serve`, minus Kafka."""

    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        resolver: StubResolver | None = None,
        **overrides: Any,
    ) -> None:
        self.settings: NotifierSettings = notifier_settings(settings, **overrides)
        self.loop = make_loop(self.settings, sessions, resolver=resolver)
        self.handler = NotifierHandler(self.settings, sessions, on_created=self.loop.wake)


async def attempts_of(
    sessions: async_sessionmaker[AsyncSession], delivery_id: uuid.UUID
) -> list[WebhookAttempt]:
    async with sessions() as session:
        return list(
            await session.scalars(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id == delivery_id)
                .order_by(WebhookAttempt.id)
            )
        )


async def settled(factory: JobFactory, job_id: uuid.UUID, timeout: float = 20) -> WebhookDelivery:
    async def done() -> WebhookDelivery | None:
        deliveries = await factory.deliveries(job_id)
        if deliveries and deliveries[-1].status != DeliveryStatus.PENDING:
            return deliveries[-1]
        return None

    delivery: WebhookDelivery = await wait_until(
        done, timeout=timeout, what=f"delivery of {job_id}", interval=0.1
    )
    return delivery


async def test_a_completed_job_is_delivered_signed_once(
    settings: Settings,
    sessionmaker_: async_sessionmaker[AsyncSession],
    factory: JobFactory,
    receiver: WebhookReceiver,
    owner: Owner,
) -> None:
    url = receiver.hook("/ok", secret=owner.webhook_secret)
    job_id = await factory.make(JobStatus.COMPLETED, owner=owner, webhook_url=url)
    notifier = Notifier(settings, sessionmaker_)
    assert await notifier.handler(finished(job_id)) == Outcome.OK
    [pending] = await factory.deliveries(job_id)
    assert pending.status == DeliveryStatus.PENDING
    assert pending.event_id == f"evt_{job_id.hex}_completed_1"

    async with running(notifier.loop):
        delivery = await settled(factory, job_id)
    assert delivery.status == DeliveryStatus.SUCCEEDED
    assert delivery.delivered_at is not None
    [request] = receiver.received("/ok")
    assert request.verified
    assert request.event_id == delivery.event_id
    assert request.headers["content-type"] == "application/json"
    job = await factory.get(job_id)
    assert request.payload == {
        "type": "job.completed",
        "job_id": str(job_id),
        "status": "COMPLETED",
        "result_url": f"https://stt.example.test/api/v1/jobs/{job_id}/result",
        "created_at": job.created_at.isoformat().replace("+00:00", "Z"),
        "finished_at": job.finished_at.isoformat().replace("+00:00", "Z") if job.finished_at else None,
    }
    [attempt] = await attempts_of(sessionmaker_, delivery.id)
    assert attempt.status_code == 200
    assert attempt.error is None
    assert attempt.latency_ms is not None
    assert attempt.latency_ms > 0


async def test_failed_and_cancelled_jobs_carry_their_error(
    settings: Settings,
    sessionmaker_: async_sessionmaker[AsyncSession],
    factory: JobFactory,
    receiver: WebhookReceiver,
    owner: Owner,
) -> None:
    failed = await factory.make(
        JobStatus.FAILED,
        owner=owner,
        webhook_url=receiver.hook("/failed", secret=owner.webhook_secret),
        error_code="invalid_audio",
        error_message="not audio",
    )
    cancelled = await factory.make(
        JobStatus.CANCELLED,
        owner=owner,
        webhook_url=receiver.hook("/cancelled", secret=owner.webhook_secret),
        error_code="cancelled",
        error_message="Cancelled by the client.",
    )
    notifier = Notifier(settings, sessionmaker_)
    for job_id in (failed, cancelled):
        await notifier.handler(finished(job_id))
    async with running(notifier.loop):
        await settled(factory, failed)
        await settled(factory, cancelled)
    [on_failure] = receiver.delivered("/failed")
    assert on_failure.payload["type"] == "job.failed"
    assert on_failure.payload["error"] == {
        "code": "invalid_audio",
        "message": "not audio",
        "next_step": next_step("invalid_audio", failed),
        "retryable": False,
    }
    assert "result_url" not in on_failure.payload
    [on_cancel] = receiver.delivered("/cancelled")
    assert on_cancel.payload["type"] == "job.cancelled"
    assert on_cancel.payload["status"] == "CANCELLED"
    assert on_cancel.payload["error"]["code"] == "cancelled"


async def test_a_receiver_failing_three_times_gets_one_success_and_every_attempt_is_logged(
    settings: Settings,
    sessionmaker_: async_sessionmaker[AsyncSession],
    factory: JobFactory,
    receiver: WebhookReceiver,
    owner: Owner,
) -> None:
    url = receiver.hook("/flaky", secret=owner.webhook_secret, script=[500, 503, 502])
    job_id = await factory.make(JobStatus.COMPLETED, owner=owner, webhook_url=url)
    notifier = Notifier(settings, sessionmaker_)
    await notifier.handler(finished(job_id))
    async with running(notifier.loop):
        delivery = await settled(factory, job_id)
        await asyncio.sleep(0.6)  # longer than the retry delay: nothing more may come
    assert delivery.status == DeliveryStatus.SUCCEEDED
    requests = receiver.received("/flaky")
    assert [r.answered for r in requests] == [500, 503, 502, 200]
    assert all(r.verified for r in requests)
    assert {r.event_id for r in requests} == {delivery.event_id}  # same id on every attempt
    attempts = await attempts_of(sessionmaker_, delivery.id)
    assert [a.status_code for a in attempts] == [500, 503, 502, 200]
    assert [a.error for a in attempts[:3]] == [
        "HTTP 500: answer 500",
        "HTTP 503: answer 503",
        "HTTP 502: answer 502",
    ]
    gaps = [(b.attempted_at - a.attempted_at).total_seconds() for a, b in itertools.pairwise(attempts)]
    assert all(gap >= 0.19 for gap in gaps), gaps  # the schedule was waited out


async def test_410_stops_retrying(
    settings: Settings,
    sessionmaker_: async_sessionmaker[AsyncSession],
    factory: JobFactory,
    receiver: WebhookReceiver,
    owner: Owner,
) -> None:
    url = receiver.hook("/gone", secret=owner.webhook_secret, then=410)
    job_id = await factory.make(JobStatus.COMPLETED, owner=owner, webhook_url=url)
    notifier = Notifier(settings, sessionmaker_)
    await notifier.handler(finished(job_id))
    async with running(notifier.loop):
        delivery = await settled(factory, job_id)
        await asyncio.sleep(0.8)
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.next_attempt_at is None
    assert [r.answered for r in receiver.received("/gone")] == [410]


async def test_retries_end_after_the_schedule(
    settings: Settings,
    sessionmaker_: async_sessionmaker[AsyncSession],
    factory: JobFactory,
    receiver: WebhookReceiver,
    owner: Owner,
) -> None:
    url = receiver.hook("/down", secret=owner.webhook_secret, then=500)
    job_id = await factory.make(JobStatus.COMPLETED, owner=owner, webhook_url=url)
    notifier = Notifier(settings, sessionmaker_, webhook_retry_schedule_seconds=[0.1, 0.1])
    await notifier.handler(finished(job_id))
    async with running(notifier.loop):
        delivery = await settled(factory, job_id)
        await asyncio.sleep(0.5)
    assert delivery.status == DeliveryStatus.FAILED
    assert len(receiver.received("/down")) == 3  # 1 + len(schedule)


@pytest.mark.parametrize(
    ("host", "names"),
    [
        ("hooks.example.test", {"hooks.example.test": ["127.0.0.1"]}),  # a name that resolves to loopback
        ("mixed.example.test", {"mixed.example.test": ["93.184.215.14", "127.0.0.1"]}),  # one bad address
        ("127.0.0.1", {}),  # the literal address
        ("localhost", {}),  # refused by name, before any lookup
        ("2130706433", {}),  # 127.0.0.1 as a number
        ("[::ffff:127.0.0.1]", {}),  # IPv4-mapped IPv6
    ],
)
async def test_a_url_resolving_to_loopback_is_refused_at_delivery(
    settings: Settings,
    sessionmaker_: async_sessionmaker[AsyncSession],
    factory: JobFactory,
    receiver: WebhookReceiver,
    owner: Owner,
    host: str,
    names: dict[str, list[str]],
) -> None:
    receiver.hook("/internal", secret=owner.webhook_secret)
    url = f"http://{host}:{receiver.port}/internal"
    job_id = await factory.make(JobStatus.COMPLETED, owner=owner, webhook_url=url)
    resolver = StubResolver(names)
    # Empty allow-list (the production default): the receiver's loopback address is internal.
    notifier = Notifier(settings, sessionmaker_, resolver, webhook_allow_networks=[])
    await notifier.handler(finished(job_id))
    async with running(notifier.loop):
        delivery = await settled(factory, job_id)
    assert delivery.status == DeliveryStatus.FAILED  # refused for good: retrying cannot make it safe
    [attempt] = await attempts_of(sessionmaker_, delivery.id)
    assert attempt.status_code is None
    assert attempt.error is not None
    assert attempt.error.split(":")[0] in {"url_address_blocked", "url_host_blocked"}
    assert receiver.received() == []  # nothing reached the receiver


async def test_an_unresolvable_name_is_retried(
    settings: Settings,
    sessionmaker_: async_sessionmaker[AsyncSession],
    factory: JobFactory,
    owner: Owner,
) -> None:
    job_id = await factory.make(
        JobStatus.COMPLETED, owner=owner, webhook_url="https://nowhere.example.test/hook"
    )
    resolver = StubResolver({})
    notifier = Notifier(settings, sessionmaker_, resolver, webhook_retry_schedule_seconds=[0.1])
    await notifier.handler(finished(job_id))
    async with running(notifier.loop):
        delivery = await settled(factory, job_id)
    attempts = await attempts_of(sessionmaker_, delivery.id)
    assert len(attempts) == 2
    assert all((a.error or "").startswith("url_unresolvable") for a in attempts)
    assert resolver.calls == ["nowhere.example.test", "nowhere.example.test"]  # checked on every attempt


async def test_redirects_are_not_followed_by_default(
    settings: Settings,
    sessionmaker_: async_sessionmaker[AsyncSession],
    factory: JobFactory,
    receiver: WebhookReceiver,
    owner: Owner,
) -> None:
    url = receiver.hook("/moved", secret=owner.webhook_secret, then="redirect")  # type: ignore[arg-type]
    receiver.hook("/redirected", secret=owner.webhook_secret)
    job_id = await factory.make(JobStatus.COMPLETED, owner=owner, webhook_url=url)
    notifier = Notifier(settings, sessionmaker_, webhook_retry_schedule_seconds=[0.1])
    await notifier.handler(finished(job_id))
    async with running(notifier.loop):
        delivery = await settled(factory, job_id)
    assert delivery.status == DeliveryStatus.FAILED
    attempts = await attempts_of(sessionmaker_, delivery.id)
    assert [a.status_code for a in attempts] == [307, 307]
    assert "not followed" in (attempts[0].error or "")
    assert receiver.received("/redirected") == []


async def test_followed_redirects_are_checked_hop_by_hop(
    settings: Settings,
    sessionmaker_: async_sessionmaker[AsyncSession],
    factory: JobFactory,
    receiver: WebhookReceiver,
    owner: Owner,
) -> None:
    url = receiver.hook("/moved", secret=owner.webhook_secret, then="redirect")  # type: ignore[arg-type]
    receiver.hook("/redirected", secret=owner.webhook_secret)
    job_id = await factory.make(JobStatus.COMPLETED, owner=owner, webhook_url=url)
    notifier = Notifier(settings, sessionmaker_, webhook_follow_redirects=True)
    await notifier.handler(finished(job_id))
    async with running(notifier.loop):
        delivery = await settled(factory, job_id)
    assert delivery.status == DeliveryStatus.SUCCEEDED
    [hop] = receiver.delivered("/redirected")
    assert hop.event_id == delivery.event_id  # same signed request, re-sent to the new location


async def test_a_receiver_that_hangs_times_out_and_is_retried(
    settings: Settings,
    sessionmaker_: async_sessionmaker[AsyncSession],
    factory: JobFactory,
    receiver: WebhookReceiver,
    owner: Owner,
) -> None:
    url = receiver.hook("/slow", secret=owner.webhook_secret, script=["slow"])
    job_id = await factory.make(JobStatus.COMPLETED, owner=owner, webhook_url=url)
    notifier = Notifier(settings, sessionmaker_, webhook_timeout_seconds=1.0)
    await notifier.handler(finished(job_id))
    async with running(notifier.loop):
        delivery = await settled(factory, job_id)
    assert delivery.status == DeliveryStatus.SUCCEEDED
    first, second = await attempts_of(sessionmaker_, delivery.id)
    assert first.status_code is None
    assert (first.error or "").startswith("timeout")
    assert 900 <= (first.latency_ms or 0) < 3000
    assert second.status_code == 200


async def test_duplicate_finished_messages_make_one_delivery(
    settings: Settings,
    sessionmaker_: async_sessionmaker[AsyncSession],
    factory: JobFactory,
    receiver: WebhookReceiver,
    owner: Owner,
) -> None:
    url = receiver.hook("/dup", secret=owner.webhook_secret)
    job_id = await factory.make(JobStatus.COMPLETED, owner=owner, webhook_url=url)
    notifier = Notifier(settings, sessionmaker_)
    outcomes = await asyncio.gather(*(notifier.handler(finished(job_id)) for _ in range(5)))
    assert sorted(outcomes) == [Outcome.DUPLICATE] * 4 + [Outcome.OK]
    async with running(notifier.loop):
        await settled(factory, job_id)
        # Later duplicates (a merger redelivery, a maintenance re-notify) after the success:
        assert await notifier.handler(finished(job_id)) == Outcome.DUPLICATE
        await asyncio.sleep(0.5)
    assert len(await factory.deliveries(job_id)) == 1
    assert len(receiver.delivered("/dup")) == 1


async def test_a_retried_job_that_finishes_again_is_a_new_event(
    settings: Settings,
    sessionmaker_: async_sessionmaker[AsyncSession],
    factory: JobFactory,
    receiver: WebhookReceiver,
    owner: Owner,
) -> None:
    url = receiver.hook("/again", secret=owner.webhook_secret)
    job_id = await factory.make(JobStatus.COMPLETED, owner=owner, webhook_url=url, terminal_transitions=2)
    notifier = Notifier(settings, sessionmaker_)
    await notifier.handler(finished(job_id))
    [delivery] = await factory.deliveries(job_id)
    assert delivery.event_id.endswith("_completed_2")


async def test_nothing_is_sent_without_a_url_a_key_or_a_finished_job(
    settings: Settings, sessionmaker_: async_sessionmaker[AsyncSession], factory: JobFactory, owner: Owner
) -> None:
    notifier = Notifier(settings, sessionmaker_)
    no_url = await factory.make(JobStatus.COMPLETED, owner=owner)
    no_key = await factory.make(JobStatus.COMPLETED, webhook_url="http://127.0.0.1:9/x")
    active = await factory.make(JobStatus.TRANSCRIBING, owner=owner, webhook_url="http://127.0.0.1:9/x")
    assert await notifier.handler(finished(no_url)) == Outcome.OK
    assert await notifier.handler(finished(no_key)) == Outcome.OK
    assert await notifier.handler(finished(active)) == Outcome.DUPLICATE
    assert await notifier.handler(finished(uuid.uuid4())) == Outcome.DUPLICATE  # deleted job
    for job_id in (no_url, no_key, active):
        assert await factory.deliveries(job_id) == []


async def test_a_deleted_key_means_an_unsignable_event(
    settings: Settings,
    sessionmaker_: async_sessionmaker[AsyncSession],
    factory: JobFactory,
    receiver: WebhookReceiver,
) -> None:
    doomed = await make_owner(sessionmaker_, name="doomed")
    url = receiver.hook("/unsigned", secret=doomed.webhook_secret)
    job_id = await factory.make(JobStatus.COMPLETED, owner=doomed, webhook_url=url)
    notifier = Notifier(settings, sessionmaker_)
    await notifier.handler(finished(job_id))
    from sqlalchemy import delete

    from stt_common.db.models import ApiKey

    async with sessionmaker_() as session, session.begin():
        await session.execute(delete(ApiKey).where(ApiKey.id == doomed.key_id))
    async with running(notifier.loop):
        delivery = await settled(factory, job_id)
    assert delivery.status == DeliveryStatus.FAILED
    [attempt] = await attempts_of(sessionmaker_, delivery.id)
    assert "cannot be signed" in (attempt.error or "")
    assert receiver.received() == []


async def test_two_replicas_never_send_one_event_twice(
    settings: Settings,
    sessionmaker_: async_sessionmaker[AsyncSession],
    factory: JobFactory,
    receiver: WebhookReceiver,
    owner: Owner,
) -> None:
    job_ids = []
    for n in range(12):
        url = receiver.hook(f"/replica/{n}", secret=owner.webhook_secret, script=[500] if n % 3 == 0 else [])
        job_ids.append(await factory.make(JobStatus.COMPLETED, owner=owner, webhook_url=url))
    first, second = Notifier(settings, sessionmaker_), Notifier(settings, sessionmaker_)
    for job_id in job_ids:
        await first.handler(finished(job_id))
    async with running(first.loop), running(second.loop):
        for job_id in job_ids:
            await settled(factory, job_id)
        await asyncio.sleep(0.5)
    for n in range(12):
        assert len(receiver.delivered(f"/replica/{n}")) == 1
        assert len(receiver.received(f"/replica/{n}")) == (2 if n % 3 == 0 else 1)


async def test_a_claim_interrupted_mid_attempt_is_sent_again_after_it_expires(
    settings: Settings,
    sessionmaker_: async_sessionmaker[AsyncSession],
    factory: JobFactory,
    receiver: WebhookReceiver,
    owner: Owner,
) -> None:
    url = receiver.hook("/crash", secret=owner.webhook_secret)
    job_id = await factory.make(JobStatus.COMPLETED, owner=owner, webhook_url=url)
    notifier = Notifier(settings, sessionmaker_)
    await notifier.handler(finished(job_id))
    claims = await notifier.loop.claim(50)  # a replica claims it ... and dies before sending
    assert job_id in {claim.job_id for claim in claims}
    async with running(notifier.loop):
        await asyncio.sleep(0.5)
        assert receiver.received("/crash") == []  # the claim holds it: nobody else sends meanwhile
        from sqlalchemy import func, update

        async with sessionmaker_() as session, session.begin():  # ... until the claim expires
            await session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.job_id == job_id)
                .values(next_attempt_at=func.now())
            )
        delivery = await settled(factory, job_id)
    assert delivery.status == DeliveryStatus.SUCCEEDED
    assert len(receiver.delivered("/crash")) == 1
    assert delivery.attempts == 2  # the lost attempt counts against the schedule
