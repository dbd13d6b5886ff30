"""`python -m stt_merger`: consume `stt.jobs.transcribed`, produce `stt.jobs.finished`."""

from __future__ import annotations

import asyncio

from stt_common.logs import configure_logging
from stt_common.messages import Topic
from stt_common.service import run_worker
from stt_merger.handler import MergerHandler
from stt_merger.settings import MergerSettings


def main() -> None:
    settings = MergerSettings()
    configure_logging(settings.log_level, service=settings.service_name)
    asyncio.run(
        run_worker(
            settings,
            stage="merger",
            topic=Topic.JOBS_TRANSCRIBED,
            make_handler=lambda sessions, store, producer: MergerHandler(sessions, store, producer),
        )
    )
