"""`Idempotency-Key` on submissions (draft-ietf-httpapi-idempotency-key-header).

A key is reserved in the same transaction that creates the job (`INSERT … ON CONFLICT DO NOTHING`
on the `(api_key_id, key)` primary key), so two concurrent requests with one key cannot both create
a job. The row holds a digest of the request: a later request with the same key and the same digest
gets the original job back; a different digest is a client error (422). An upload's digest covers
the file's SHA-256, known only once the body has been read, so its row is *pending* (empty digest)
while the upload runs; a request arriving meanwhile gets 409 and may retry. A failed submission
deletes its reservation, so the client can retry with the same key. Rows expire after
`idempotency_ttl_seconds` (the maintenance job deletes expired rows; here they are ignored).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from stt_common.db.models import IdempotencyKey
from stt_ingest.problems import ApiProblem

HEADER = "Idempotency-Key"
PENDING = ""
_VALID_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def parse_key(value: str | None) -> str | None:
    if value is None:
        return None
    # Structured-field strings are quoted; accept both forms.
    text = value.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    if not _VALID_KEY.match(text):
        raise ApiProblem(400, "invalid_idempotency_key", f"{HEADER} must be 1-255 visible ASCII characters.")
    return text


async def find(session: AsyncSession, api_key_id: uuid.UUID, key: str) -> IdempotencyKey | None:
    """The live record for this key, if any (expired ones are removed)."""
    row = await session.scalar(
        select(IdempotencyKey).where(IdempotencyKey.api_key_id == api_key_id, IdempotencyKey.key == key)
    )
    if row is not None and row.expires_at <= datetime.now(UTC):
        await session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.api_key_id == api_key_id,
                IdempotencyKey.key == key,
                IdempotencyKey.expires_at <= datetime.now(UTC),
            )
        )
        return None
    return row


async def reserve(
    session: AsyncSession,
    api_key_id: uuid.UUID,
    key: str,
    *,
    job_id: uuid.UUID,
    digest: str,
    ttl_seconds: int,
) -> bool:
    """Claim the key for `job_id` (inside the job's transaction); False if another request has it."""
    statement = (
        insert(IdempotencyKey)
        .values(
            api_key_id=api_key_id,
            key=key,
            request_hash=digest,
            job_id=job_id,
            expires_at=datetime.now(UTC) + timedelta(seconds=ttl_seconds),
        )
        .on_conflict_do_nothing(index_elements=["api_key_id", "key"])
        .returning(IdempotencyKey.key)
    )
    return (await session.scalar(statement)) is not None


async def settle(
    session: AsyncSession, api_key_id: uuid.UUID, key: str, *, digest: str, ttl_seconds: int
) -> None:
    await session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.api_key_id == api_key_id, IdempotencyKey.key == key)
        .values(request_hash=digest, expires_at=datetime.now(UTC) + timedelta(seconds=ttl_seconds))
    )


async def release(session: AsyncSession, api_key_id: uuid.UUID, key: str) -> None:
    await session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.api_key_id == api_key_id, IdempotencyKey.key == key)
    )


def in_progress() -> ApiProblem:
    return ApiProblem(
        409,
        "idempotency_in_progress",
        f"A request with this {HEADER} is still being processed; retry later.",
        headers={"Retry-After": "5"},
    )


def mismatch() -> ApiProblem:
    return ApiProblem(
        422,
        "idempotency_key_reused",
        f"This {HEADER} was used with a different request body.",
    )


def job_gone() -> ApiProblem:
    return ApiProblem(409, "idempotency_job_deleted", f"The job created with this {HEADER} has been deleted.")
