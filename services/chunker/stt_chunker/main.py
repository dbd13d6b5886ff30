"""`python -m stt_chunker`: consume `stt.jobs.submitted`, produce `stt.chunks.ready`."""

from __future__ import annotations

import asyncio

from stt_chunker.handler import ChunkerHandler
from stt_chunker.settings import ChunkerSettings
from stt_common.logs import configure_logging
from stt_common.messages import Topic
from stt_common.service import run_worker


def main() -> None:
    settings = ChunkerSettings()
    configure_logging(settings.log_level, service=settings.service_name)
    asyncio.run(
        run_worker(
            settings,
            stage="chunker",
            topic=Topic.JOBS_SUBMITTED,
            make_handler=lambda sessions, store, producer: ChunkerHandler(
                settings, sessions, store, producer
            ),
        )
    )
