"""`GET /api/v1/jobs/{id}/webhooks` and `POST …/webhooks/redeliver` on the real ingest app (lifespan
run for real, in-process), with deliveries made by the real notifier handler and loop."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import DeliveryStatus, JobStatus
from stt_common.messages import Topic
from stt_common.settings import Settings
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.integration.ingest.conftest import Api, AppFactory, StubResolver, make_api, messages_for
from tests.integration.notifier.factory import JobFactory, Owner, make_owner
from tests.integration.notifier.test_delivery import Notifier, finished, running, settled

__all__ = ["make_api"]  # the ingest suite's app factory fixture, used here too

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
async def api(make_api: AppFactory) -> AsyncIterator[Api]:
    async with make_api(resolver=StubResolver()) as started:
        yield started


def assert_problem(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code


async def test_deliveries_and_attempts_are_listed(
    api: Api,
    settings: Settings,
    sessionmaker_: async_sessionmaker[AsyncSession],
    factory: JobFactory,
    receiver: WebhookReceiver,
    owner: Owner,
) -> None:
    url = receiver.hook("/listed", secret=owner.webhook_secret, script=[503])
    job_id = await factory.make(JobStatus.COMPLETED, owner=owner, webhook_url=url)
    empty = await api.client.get(f"/api/v1/jobs/{job_id}/webhooks", headers=owner.headers)
    assert empty.status_code == 200
    assert empty.json() == {"job_id": str(job_id), "items": []}

    notifier = Notifier(settings, sessionmaker_)
    await notifier.handler(finished(job_id))
    async with running(notifier.loop):
        await settled(factory, job_id)
    response = await api.client.get(f"/api/v1/jobs/{job_id}/webhooks", headers=owner.headers)
    assert response.status_code == 200
    [item] = response.json()["items"]
    assert item["event_id"] == f"evt_{job_id.hex}_completed_1"
    assert item["event_type"] == "job.completed"
    assert item["url"] == url
    assert item["status"] == "SUCCEEDED"
    assert item["delivered_at"] is not None
    assert item["next_attempt_at"] is None
    assert item["attempt_count"] == 2
    first, second = item["attempts"]
    assert first["status_code"] == 503
    assert first["error"].startswith("HTTP 503")
    assert second["status_code"] == 200
    assert second["error"] is None
    assert second["latency_ms"] > 0
    assert re.match(r"\d{4}-\d\d-\d\dT", second["attempted_at"])


async def test_another_keys_job_is_404_and_no_key_is_401(
    api: Api, sessionmaker_: async_sessionmaker[AsyncSession], factory: JobFactory, owner: Owner
) -> None:
    job_id = await factory.make(JobStatus.COMPLETED, owner=owner, webhook_url="http://127.0.0.1:9/x")
    stranger = await make_owner(sessionmaker_, name="stranger")
    for method, path in (("GET", "webhooks"), ("POST", "webhooks/redeliver")):
        response = await api.client.request(method, f"/api/v1/jobs/{job_id}/{path}", headers=stranger.headers)
        assert_problem(response, 404, "job_not_found")
        assert_problem(
            await api.client.request(method, f"/api/v1/jobs/{job_id}/{path}"), 401, "unauthenticated"
        )
    assert_problem(
        await api.client.get("/api/v1/jobs/not-a-uuid/webhooks", headers=owner.headers),
        422,
        "validation_error",
    )


async def test_redeliver_resends_the_same_event(
    api: Api,
    settings: Settings,
    sessionmaker_: async_sessionmaker[AsyncSession],
    factory: JobFactory,
    receiver: WebhookReceiver,
    owner: Owner,
) -> None:
    url = receiver.hook("/again", secret=owner.webhook_secret, script=[410], then=200)
    job_id = await factory.make(JobStatus.COMPLETED, owner=owner, webhook_url=url)
    notifier = Notifier(settings, sessionmaker_)
    await notifier.handler(finished(job_id))
    async with running(notifier.loop):
        gone = await settled(factory, job_id)
    assert gone.status == DeliveryStatus.FAILED  # the receiver said 410 ... and then came back

    response = await api.client.post(f"/api/v1/jobs/{job_id}/webhooks/redeliver", headers=owner.headers)
    assert response.status_code == 202, response.text
    [item] = response.json()["items"]
    assert item["status"] == "PENDING"
    assert item["event_id"] == gone.event_id
    assert item["attempt_count"] == 1  # the history stays

    async with running(Notifier(settings, sessionmaker_).loop):
        delivery = await settled(factory, job_id)
    assert delivery.status == DeliveryStatus.SUCCEEDED
    assert delivery.id == gone.id
    first, second = receiver.received("/again")
    assert first.event_id == second.event_id == gone.event_id  # receivers can de-duplicate
    assert second.verified
    assert second.answered == 200
    listed = (await api.client.get(f"/api/v1/jobs/{job_id}/webhooks", headers=owner.headers)).json()
    assert [a["status_code"] for a in listed["items"][0]["attempts"]] == [410, 200]


async def test_redeliver_without_a_delivery_asks_the_notifier(
    api: Api,
    settings: Settings,
    sessionmaker_: async_sessionmaker[AsyncSession],
    factory: JobFactory,
    owner: Owner,
) -> None:
    job_id = await factory.make(
        JobStatus.FAILED, owner=owner, webhook_url="http://127.0.0.1:9/x", error_code="timeout"
    )
    response = await api.client.post(f"/api/v1/jobs/{job_id}/webhooks/redeliver", headers=owner.headers)
    assert response.status_code == 202, response.text
    assert response.json()["items"] == []
    [trigger] = await messages_for(settings, Topic.JOBS_FINISHED, job_id)
    assert trigger.producer == "ingest"
    # The notifier makes the event from that trigger, with the id it would have used anyway.
    await Notifier(settings, sessionmaker_).handler(trigger)
    [delivery] = await factory.deliveries(job_id)
    assert delivery.event_id == f"evt_{job_id.hex}_failed_1"
    assert delivery.status == DeliveryStatus.PENDING


async def test_redeliver_refuses_active_jobs_and_jobs_without_a_webhook(
    api: Api, factory: JobFactory, owner: Owner
) -> None:
    active = await factory.make(JobStatus.TRANSCRIBING, owner=owner, webhook_url="http://127.0.0.1:9/x")
    silent = await factory.make(JobStatus.COMPLETED, owner=owner)
    assert_problem(
        await api.client.post(f"/api/v1/jobs/{active}/webhooks/redeliver", headers=owner.headers),
        409,
        "job_not_finished",
    )
    assert_problem(
        await api.client.post(f"/api/v1/jobs/{silent}/webhooks/redeliver", headers=owner.headers),
        409,
        "no_webhook_url",
    )


async def test_the_routes_are_in_the_openapi_document(api: Api) -> None:
    document = (await api.client.get("/openapi.json")).json()
    assert "get" in document["paths"]["/api/v1/jobs/{job_id}/webhooks"]
    redeliver = document["paths"]["/api/v1/jobs/{job_id}/webhooks/redeliver"]["post"]
    assert {"202", "404", "409"} <= set(redeliver["responses"])
    await asyncio.sleep(0)
