"""`Idempotency-Key` on submissions (draft-ietf-httpapi-idempotency-key-header).

A key is reserved in the same transaction that creates the job (`INSERT … ON CONFLICT DO NOTHING`
on the `(api_key_id, key)` primary key), so two concurrent requests with one key cannot both create
a job. The row holds a digest of the request: a later request with the same key and the same digest
gets the original job back; a different digest is a client error (422). An upload's digest covers
the file's SHA-256, known only once the body has been read, so its row is *pending* (empty digest)
while the upload runs; a request arriving meanwhile gets 409 and may retry. A failed submission
deletes its reservation, so the client can retry with the same key. Rows expire after
`idempotency_ttl_seconds` (the maintenance job deletes expired rows; here they are ignored).

A pending row is a lease: it expires `PENDING_LEASE` after the last sign of life of the upload that
holds it (`kept_alive` renews it while the upload runs). An upload whose ingest process died cannot
delete its reservation, and without the lease the client's retry with the same key would be told
"in progress" for hours; with it, the retry goes through within a minute or two.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import IdempotencyKey
from stt_common.logs import get_logger
from stt_ingest.problems import ApiProblem

log = get_logger(__name__)

HEADER = "Idempotency-Key"
PENDING = ""
PENDING_LEASE = timedelta(seconds=90)
# Three renewals per lease: one failed renewal (a database blip) does not let the lease lapse.
_RENEW_EVERY = PENDING_LEASE.total_seconds() / 3
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


@contextlib.asynccontextmanager
async def kept_alive(
    sessions: async_sessionmaker[AsyncSession], api_key_id: uuid.UUID, key: str | None
) -> AsyncIterator[None]:
    """Renew a pending reservation's lease while the body runs (nothing to do without a key)."""
    if key is None:
        yield
        return

    async def renew() -> None:
        while True:
            await asyncio.sleep(_RENEW_EVERY)
            try:
                async with sessions() as session, session.begin():
                    await session.execute(
                        update(IdempotencyKey)
                        .where(
                            IdempotencyKey.api_key_id == api_key_id,
                            IdempotencyKey.key == key,
                            IdempotencyKey.request_hash == PENDING,
                        )
                        .values(expires_at=datetime.now(UTC) + PENDING_LEASE)
                    )
            except Exception as exc:  # the next renewal may succeed; the upload goes on either way
                log.warning("could not renew an idempotency reservation", error=type(exc).__name__)

    renewing = asyncio.create_task(renew())
    try:
        yield
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewing


async def release(session: AsyncSession, api_key_id: uuid.UUID, key: str) -> None:
    await session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.api_key_id == api_key_id, IdempotencyKey.key == key)
    )


def in_progress() -> ApiProblem:
    return ApiProblem(
        409,
        "idempotency_in_progress",
        f"A request with this {HEADER} is still being processed; retry later (if its upload was "
        f"interrupted, the key is free again within {int(PENDING_LEASE.total_seconds())} s).",
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
