"""`python -m stt_transcriber`: consume `stt.chunks.ready`, produce `stt.jobs.transcribed` (and the
next chunk in chained mode)."""

from __future__ import annotations

import asyncio

from stt_common.logs import configure_logging
from stt_common.messages import Topic
from stt_common.service import run_worker
from stt_transcriber.budget import VendorBudget
from stt_transcriber.handler import TranscriberHandler
from stt_transcriber.pool import ProviderPool
from stt_transcriber.settings import TranscriberSettings


async def run(settings: TranscriberSettings) -> None:
    pool = ProviderPool(settings)
    budget = VendorBudget.from_settings(settings)
    try:
        await run_worker(
            settings,
            stage="transcriber",
            topic=Topic.CHUNKS_READY,
            make_handler=lambda sessions, store, producer: TranscriberHandler(
                settings, sessions, store, producer, pool, budget
            ),
        )
    finally:
        await pool.aclose()
        await budget.aclose()


def main() -> None:
    settings = TranscriberSettings()
    configure_logging(settings.log_level, service=settings.service_name)
    asyncio.run(run(settings))
