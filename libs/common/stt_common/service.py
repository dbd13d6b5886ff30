"""What every worker's `main()` does: open Postgres and S3, then run its handler under the runner."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.engine import make_engine, make_sessionmaker, ping
from stt_common.kafka import EventProducer
from stt_common.messages import Topic
from stt_common.runner import Handler, serve_stage
from stt_common.s3 import ObjectStore
from stt_common.settings import Settings

HandlerFactory = Callable[[async_sessionmaker[AsyncSession], ObjectStore, EventProducer], Handler]


async def run_worker(settings: Settings, *, stage: str, topic: Topic, make_handler: HandlerFactory) -> None:
    engine = make_engine(settings.database_url, pool_size=settings.max_in_flight + 2)
    sessions = make_sessionmaker(engine)
    try:
        async with ObjectStore.from_settings(settings) as store:
            await serve_stage(
                settings=settings,
                stage=stage,
                topic=topic,
                make_handler=lambda producer: make_handler(sessions, store, producer),
                readiness={"postgres": lambda: ping(engine), "s3": store.ping},
            )
    finally:
        await engine.dispose()
