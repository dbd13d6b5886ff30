"""Notifier and maintenance fixtures: a webhook receiver on 127.0.0.1, job factory, settings.

The notifier's pieces run in-process here (handler, delivery loop, sender) against the real
Postgres; nothing leaves 127.0.0.1 (names resolve through a stub resolver, non-loopback addresses
are only classified)."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.settings import Settings
from stt_notifier.settings import NotifierSettings
from tests.fakes.webhook_receiver import WebhookReceiver, serve_receiver
from tests.integration.notifier.factory import JobFactory, Owner, make_owner, with_overrides

LOOPBACK_ONLY = [ipaddress.ip_network("127.0.0.1/32")]


def notifier_settings(settings: Settings, **overrides: Any) -> NotifierSettings:
    """Fast retries (0.2 s, no jitter), the receiver's address allowed, short timeouts."""
    values: dict[str, Any] = {
        "webhook_allow_networks": LOOPBACK_ONLY,
        "webhook_retry_schedule_seconds": [0.2, 0.2, 0.2],
        "webhook_retry_jitter": 0.0,
        "webhook_poll_interval_seconds": 0.1,
        "webhook_timeout_seconds": 3.0,
        "webhook_concurrency": 4,
        "public_base_url": "https://stt.example.test",
        **overrides,
    }
    settings_: NotifierSettings = with_overrides(settings, NotifierSettings, **values)
    return settings_


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with serve_receiver() as started:
        yield started


@pytest.fixture
async def factory(sessionmaker_: async_sessionmaker[AsyncSession]) -> AsyncIterator[JobFactory]:
    made = JobFactory(sessionmaker_)
    yield made
    await made.cleanup()


@pytest.fixture(scope="session")
async def owner(sessionmaker_: async_sessionmaker[AsyncSession]) -> Owner:
    return await make_owner(sessionmaker_)
