"""What one running app holds: built in the lifespan from the settings, reached through `app.state`."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from stt_common.fetch import SafeFetcher
from stt_ingest.events import Trigger
from stt_ingest.follow import FollowHub
from stt_ingest.ratelimit import RateLimiter
from stt_ingest.settings import IngestSettings
from stt_ingest.store import IngestStore
from stt_ingest.urlingest import UrlIngestor


@dataclass
class AppState:
    settings: IngestSettings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    redis: Redis
    store: IngestStore
    trigger: Trigger
    limiter: RateLimiter
    fetcher: SafeFetcher
    ingestor: UrlIngestor
    follow: FollowHub


def app_state(request: Request) -> AppState:
    state = getattr(request.app.state, "ingest", None)
    if not isinstance(state, AppState):
        raise RuntimeError("the app is not started (its lifespan has not run)")
    return state
