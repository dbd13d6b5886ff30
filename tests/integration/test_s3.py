"""The S3 wrapper against a real S3 server (SeaweedFS)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from stt_common.s3 import ObjectNotFoundError, ObjectStore, chunk_audio_key, job_prefix, original_key


async def test_put_get_head_and_missing_key(store: ObjectStore) -> None:
    key = f"tests/{uuid.uuid4()}/small"
    await store.put_bytes(key, b"hello", content_type="text/plain")
    assert await store.get_bytes(key) == b"hello"
    assert (await store.head(key))["ContentLength"] == 5
    assert await store.exists(key)
    with pytest.raises(ObjectNotFoundError):
        await store.get_bytes(key + "-missing")
    with pytest.raises(ObjectNotFoundError):
        await store.download_file(key + "-missing", Path(os.devnull))
    assert not await store.exists(key + "-missing")


async def test_streamed_multipart_upload_and_download(store: ObjectStore, tmp_path: Path) -> None:
    """20 MB through the streaming uploader (5 MB parts) comes back byte-identical."""
    store.multipart_chunk = 5 * 1024 * 1024
    payload = os.urandom(1024 * 1024)

    async def blocks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield payload

    key = f"tests/{uuid.uuid4()}/big"
    assert await store.upload_stream(key, blocks()) == 20 * len(payload)
    assert "-" in (await store.head(key))["ETag"]  # a multipart object's ETag counts its parts
    target = tmp_path / "big"
    assert await store.download_file(key, target) == 20 * len(payload)
    with target.open("rb") as handle:
        assert all(handle.read(len(payload)) == payload for _ in range(20))


async def test_a_short_stream_is_one_put(store: ObjectStore) -> None:
    async def blocks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * 1024 * 1024

    key = f"tests/{uuid.uuid4()}/small"
    assert await store.upload_stream(key, blocks()) == 3 * 1024 * 1024
    assert "-" not in (await store.head(key))["ETag"]
    assert await store.get_bytes(key) == b"x" * 3 * 1024 * 1024


async def test_failed_stream_leaves_no_object(store: ObjectStore) -> None:
    store.multipart_threshold = store.multipart_chunk = 5 * 1024 * 1024  # a part is sent before the error

    async def blocks() -> AsyncIterator[bytes]:
        for _ in range(7):
            yield os.urandom(1024 * 1024)
        raise ValueError("client went away")

    key = f"tests/{uuid.uuid4()}/partial"
    with pytest.raises(ValueError, match="went away"):
        await store.upload_stream(key, blocks())
    assert not await store.exists(key)


async def test_upload_file_and_prefix_delete(store: ObjectStore, tmp_path: Path) -> None:
    job_id = uuid.uuid4()
    source = tmp_path / "audio.bin"
    source.write_bytes(os.urandom(300_000))
    await store.upload_file(original_key(job_id), source)
    for index in range(3):
        await store.put_bytes(chunk_audio_key(job_id, index), b"x")
    neighbour = uuid.uuid4()
    await store.put_bytes(original_key(neighbour), b"keep me")

    assert await store.delete_prefix(job_prefix(job_id)) == 4
    assert await store.list_keys(job_prefix(job_id)) == []
    assert await store.get_bytes(original_key(neighbour)) == b"keep me"
    with pytest.raises(ValueError, match="folder"):
        await store.delete_prefix("jobs")


async def test_presigned_get_serves_the_object(store: ObjectStore) -> None:
    key = f"tests/{uuid.uuid4()}/result.txt"
    await store.put_bytes(key, b"transcript", content_type="text/plain")
    url = await store.presign_get(key, expires_seconds=60, filename="result.txt")
    async with httpx.AsyncClient() as client:
        answer = await client.get(url)
    assert answer.status_code == 200
    assert answer.content == b"transcript"
    assert "result.txt" in answer.headers["content-disposition"]
