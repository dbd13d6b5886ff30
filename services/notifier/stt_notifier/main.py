"""`python -m stt_notifier`: consume `stt.jobs.finished` into delivery rows, and send them.

One process runs both halves side by side, through `serve_stage`: the stage runner (records events;
never waits on a receiver) and, as its background loop, the delivery loop (polls due rows, sends,
schedules retries). They share the ops endpoint: `/healthz` fails if either loop stops ticking;
`/readyz` checks Postgres and Kafka. SIGTERM stops both: the runner drains and commits, the loop
finishes its in-flight attempts.
"""

from __future__ import annotations

import asyncio
import ssl

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.engine import make_engine, make_sessionmaker, ping
from stt_common.logs import configure_logging, get_logger
from stt_common.messages import Topic
from stt_common.runner import serve_stage
from stt_common.ssrf import Resolver, system_resolver
from stt_notifier.delivery import SenderLimits, WebhookSender
from stt_notifier.handler import STAGE, NotifierHandler
from stt_notifier.loop import DeliveryLoop
from stt_notifier.settings import NotifierSettings

log = get_logger(__name__)


def make_sender(
    settings: NotifierSettings, *, resolver: Resolver | None = None, ssl_context: ssl.SSLContext | None = None
) -> WebhookSender:
    return WebhookSender(
        resolver=resolver or system_resolver,
        allow=settings.webhook_allow_networks,
        limits=SenderLimits(
            connect_timeout=settings.webhook_connect_timeout_seconds,
            timeout=settings.webhook_timeout_seconds,
            dns_timeout=settings.webhook_dns_timeout_seconds,
            follow_redirects=settings.webhook_follow_redirects,
            max_redirects=settings.webhook_max_redirects,
            max_url_length=settings.webhook_max_url_length,
            response_bytes=settings.webhook_response_bytes,
        ),
        ssl_context=ssl_context,
    )


def make_loop(
    settings: NotifierSettings,
    sessions: async_sessionmaker[AsyncSession],
    *,
    resolver: Resolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> DeliveryLoop:
    return DeliveryLoop(settings, sessions, make_sender(settings, resolver=resolver, ssl_context=ssl_context))


async def serve(settings: NotifierSettings) -> None:
    engine = make_engine(
        settings.database_url, pool_size=settings.max_in_flight + settings.webhook_concurrency + 2
    )
    sessions = make_sessionmaker(engine)
    deliveries = make_loop(settings, sessions)
    handler = NotifierHandler(settings, sessions, on_created=deliveries.wake)
    try:
        await serve_stage(
            settings=settings,
            stage=STAGE,
            topic=Topic.JOBS_FINISHED,
            make_handler=lambda _producer: handler,
            readiness={"postgres": lambda: ping(engine)},
            background=[deliveries],
        )
    finally:
        await engine.dispose()


def main() -> None:
    settings = NotifierSettings()
    configure_logging(settings.log_level, service=settings.service_name)
    asyncio.run(serve(settings))
