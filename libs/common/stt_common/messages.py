"""Topic names and the message envelope.

Messages are triggers that carry ids only (claim-check): audio and transcripts live in S3.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Topic(StrEnum):
    JOBS_SUBMITTED = "stt.jobs.submitted"
    CHUNKS_READY = "stt.chunks.ready"
    JOBS_TRANSCRIBED = "stt.jobs.transcribed"
    JOBS_FINISHED = "stt.jobs.finished"

    @property
    def dlq(self) -> str:
        """Dead-letter topic for messages of this topic that cannot be decoded."""
        return f"{self.value}.dlq"


EventType = Literal[
    "stt.job.submitted.v1",
    "stt.chunk.ready.v1",
    "stt.job.transcribed.v1",
    "stt.job.finished.v1",
]

EVENT_TYPE_OF_TOPIC: dict[Topic, EventType] = {
    Topic.JOBS_SUBMITTED: "stt.job.submitted.v1",
    Topic.CHUNKS_READY: "stt.chunk.ready.v1",
    Topic.JOBS_TRANSCRIBED: "stt.job.transcribed.v1",
    Topic.JOBS_FINISHED: "stt.job.finished.v1",
}


def _now() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel):
    """Every message on every topic. Unknown fields are rejected so a bad producer is noticed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: EventType
    job_id: uuid.UUID
    chunk_index: int | None = Field(default=None, ge=0)
    attempt: int = Field(default=1, ge=1)
    occurred_at: datetime = Field(default_factory=_now)
    producer: str
    traceparent: str | None = None

    @model_validator(mode="after")
    def _chunk_messages_name_a_chunk(self) -> Envelope:
        if (self.type == "stt.chunk.ready.v1") != (self.chunk_index is not None):
            raise ValueError("chunk_index is required on chunk messages and only there")
        return self

    @classmethod
    def for_topic(
        cls,
        topic: Topic,
        job_id: uuid.UUID,
        *,
        producer: str,
        chunk_index: int | None = None,
        attempt: int = 1,
    ) -> Envelope:
        return cls(
            type=EVENT_TYPE_OF_TOPIC[topic],
            job_id=job_id,
            chunk_index=chunk_index,
            attempt=attempt,
            producer=producer,
        )

    def key(self) -> bytes:
        """Partition key: chunks spread by `job:index`, everything else by job."""
        if self.chunk_index is not None:
            return f"{self.job_id}:{self.chunk_index}".encode()
        return str(self.job_id).encode()

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> Envelope:
        if raw is None:
            raise ValueError("message has no value")
        return cls.model_validate_json(raw)
