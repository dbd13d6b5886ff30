"""S3 access (aiobotocore) and the deterministic object keys of a job.

Keys are deterministic so that a retried or duplicated step overwrites rather than adds.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from stt_common.settings import Settings

_COPY_BUFFER_BYTES = 1024 * 1024


class ObjectNotFoundError(Exception):
    """The key (or the bucket) does not exist."""


def original_key(job_id: uuid.UUID) -> str:
    return f"jobs/{job_id}/original"


def chunk_audio_key(job_id: uuid.UUID, index: int) -> str:
    return f"{chunks_prefix(job_id)}{index:04d}.wav"


def chunks_prefix(job_id: uuid.UUID) -> str:
    return f"jobs/{job_id}/chunks/"


def chunk_result_key(job_id: uuid.UUID, index: int) -> str:
    return f"{chunks_prefix(job_id)}{index:04d}.json"


def result_key(job_id: uuid.UUID, fmt: str = "json") -> str:
    return f"jobs/{job_id}/result/transcript.{fmt}"


def job_prefix(job_id: uuid.UUID) -> str:
    return f"jobs/{job_id}/"


def _is_not_found(error: ClientError) -> bool:
    code = str(error.response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}


class ObjectStore:
    """One bucket, one client. Use as `async with ObjectStore.from_settings(settings) as store:`."""

    def __init__(
        self,
        *,
        bucket: str,
        endpoint_url: str | None,
        region: str,
        access_key_id: str,
        secret_access_key: str,
        multipart_threshold: int = 16 * 1024 * 1024,
        multipart_chunk: int = 8 * 1024 * 1024,
    ) -> None:
        self.bucket = bucket
        self.multipart_threshold = multipart_threshold
        self.multipart_chunk = multipart_chunk
        self._client_kwargs: dict[str, Any] = {
            "endpoint_url": endpoint_url,
            "region_name": region,
            "aws_access_key_id": access_key_id or None,
            "aws_secret_access_key": secret_access_key or None,
            "config": AioConfig(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 3, "mode": "standard"},
                max_pool_connections=32,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        }
        self._exit_stack = contextlib.AsyncExitStack()
        self._client: Any = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ObjectStore:
        return cls(
            bucket=settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key.get_secret_value(),
            multipart_threshold=settings.s3_multipart_threshold_bytes,
            multipart_chunk=settings.s3_multipart_chunk_bytes,
        )

    async def __aenter__(self) -> Self:
        session = get_session()
        self._client = await self._exit_stack.enter_async_context(
            session.create_client("s3", **self._client_kwargs)
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._exit_stack.aclose()

    # -- bucket ---------------------------------------------------------------------------------

    async def ensure_bucket(self) -> None:
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            if not _is_not_found(error):
                raise
            await self._client.create_bucket(Bucket=self.bucket)

    async def ping(self) -> None:
        """Readiness: the bucket answers."""
        await self._client.head_bucket(Bucket=self.bucket)

    # -- writes ---------------------------------------------------------------------------------

    async def put_bytes(
        self, key: str, data: bytes | bytearray, *, content_type: str = "application/octet-stream"
    ) -> None:
        await self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    async def upload_file(
        self, key: str, path: Path, *, content_type: str = "application/octet-stream"
    ) -> None:
        """Upload a local file: one PUT below the multipart threshold, multipart above it."""

        async def parts() -> AsyncIterator[bytes]:
            with path.open("rb") as handle:
                while block := handle.read(self.multipart_chunk):
                    yield block

        await self.upload_stream(key, parts(), content_type=content_type)

    async def upload_stream(
        self,
        key: str,
        blocks: AsyncIterator[bytes],
        *,
        content_type: str = "application/octet-stream",
    ) -> int:
        """Upload a stream of any length; returns the bytes written.

        A stream shorter than the multipart threshold goes up in one PUT; a longer one as a
        multipart upload, so memory stays bounded by the threshold. If the stream raises (a size
        limit, a client that went away), the multipart upload is aborted so no partial object or
        orphaned parts are left, and the error propagates."""
        buffer = bytearray()
        total = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            async for block in blocks:
                buffer.extend(block)
                total += len(block)
                if upload_id is None and len(buffer) < max(self.multipart_threshold, self.multipart_chunk):
                    continue
                while len(buffer) >= self.multipart_chunk:
                    if upload_id is None:
                        created = await self._client.create_multipart_upload(
                            Bucket=self.bucket, Key=key, ContentType=content_type
                        )
                        upload_id = created["UploadId"]
                    part = bytes(buffer[: self.multipart_chunk])
                    del buffer[: self.multipart_chunk]
                    answer = await self._client.upload_part(
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=len(parts) + 1, Body=part
                    )
                    parts.append({"PartNumber": len(parts) + 1, "ETag": answer["ETag"]})
            if upload_id is None:
                # The buffer itself, not a copy: botocore takes a bytearray.
                await self.put_bytes(key, buffer, content_type=content_type)
                return total
            if buffer or not parts:
                answer = await self._client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=len(parts) + 1,
                    Body=bytes(buffer),
                )
                parts.append({"PartNumber": len(parts) + 1, "ETag": answer["ETag"]})
            await self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            return total
        except BaseException:
            if upload_id is not None:
                with contextlib.suppress(Exception):
                    await self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    # -- reads ----------------------------------------------------------------------------------

    async def get_bytes(self, key: str) -> bytes:
        try:
            response = await self._client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _is_not_found(error):
                raise ObjectNotFoundError(key) from error
            raise
        async with response["Body"] as body:
            data: bytes = await body.read()
            return data

    async def download_file(self, key: str, path: Path) -> int:
        """Stream an object to a local file (memory bounded by one buffer); returns its size."""
        try:
            response = await self._client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _is_not_found(error):
                raise ObjectNotFoundError(key) from error
            raise
        total = 0
        async with response["Body"] as body:
            with path.open("wb") as handle:
                while block := await body.read(_COPY_BUFFER_BYTES):
                    handle.write(block)
                    total += len(block)
        return total

    async def head(self, key: str) -> dict[str, Any]:
        try:
            answer: dict[str, Any] = await self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _is_not_found(error):
                raise ObjectNotFoundError(key) from error
            raise
        return answer

    async def exists(self, key: str) -> bool:
        try:
            await self.head(key)
        except ObjectNotFoundError:
            return False
        return True

    async def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self._client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    # -- deletes --------------------------------------------------------------------------------

    async def delete(self, key: str) -> None:
        await self._client.delete_object(Bucket=self.bucket, Key=key)

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under a prefix in batches of 1000; returns how many were deleted."""
        if not prefix.endswith("/"):
            raise ValueError("refusing to delete a prefix that is not a folder (must end with '/')")
        keys = await self.list_keys(prefix)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            await self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    # -- links ----------------------------------------------------------------------------------

    async def presign_get(self, key: str, *, expires_seconds: int = 3600, filename: str | None = None) -> str:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        url: str = await self._client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=expires_seconds
        )
        return url
