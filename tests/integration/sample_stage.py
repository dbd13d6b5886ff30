"""A stage used by the runner tests: real runner, real broker, a handler whose behaviour the
message chooses through `chunk_index` (0 ok, 1 slow, 2 fails while SAMPLE_FAIL=1).

Every handled message appends `<pid> <event> <job_id>:<chunk_index>` to $SAMPLE_LOG."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from stt_common.kafka import EventProducer
from stt_common.logs import configure_logging
from stt_common.messages import Envelope, Topic
from stt_common.runner import Handler, Outcome, serve_stage
from stt_common.settings import Settings


def make_handler(_producer: EventProducer) -> Handler:
    log_path = Path(os.environ["SAMPLE_LOG"])
    slow_seconds = float(os.environ.get("SAMPLE_SLOW_SECONDS", "3"))
    fail = os.environ.get("SAMPLE_FAIL") == "1"

    def record(event: str, envelope: Envelope) -> None:
        with log_path.open("a") as handle:
            handle.write(f"{os.getpid()} {event} {envelope.job_id}:{envelope.chunk_index}\n")

    async def handle(envelope: Envelope) -> Outcome:
        record("start", envelope)
        if envelope.chunk_index == 1:
            await asyncio.sleep(slow_seconds)
        if envelope.chunk_index == 2 and fail:
            raise RuntimeError("sample failure")
        record("done", envelope)
        return Outcome.OK

    return handle


async def main() -> None:
    settings = Settings(service_name="sample")
    configure_logging(settings.log_level, service="sample")
    await serve_stage(
        settings=settings,
        stage="sample",
        topic=Topic.CHUNKS_READY,
        make_handler=make_handler,
        readiness={},
        group_id=os.environ.get("SAMPLE_GROUP", "stt-sample"),
    )


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except RuntimeError as exc:
        print(f"sample stage failed: {exc}", file=sys.stderr)
        sys.exit(1)
