"""The shared `ObjectStore`, plus what ingest needs on top: a streamed read, so results go to the
client without being held whole in memory, and a streamed multipart write built for request bodies.

`upload_stream` here replaces the shared one for ingest's uploads. A client's body arrives in small
blocks; they are copied once, straight into a preallocated part buffer, and a full buffer is sent as
an S3 part *while the next one fills* (at most one part in flight). So memory is two part buffers
(`upload_part_bytes`, 5 MiB by default: S3's minimum part size) however large the file, with no
per-part copies (the shared version slices and copies each part, up to three part-sized objects at
once), and the network read and the S3 write overlap instead of taking turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload
from botocore.exceptions import ClientError

from stt_common.s3 import ObjectNotFoundError, ObjectStore
from stt_common.settings import Settings

_READ_BLOCK = 256 * 1024
_FIRST_WRITE = 64 * 1024
MIN_PART_BYTES = 5 * 1024 * 1024  # S3's smallest part (all but the last)


@dataclass
class ObjectReader:
    content_length: int | None
    _body: Any

    async def blocks(self) -> AsyncIterator[bytes]:
        try:
            while block := await self._body.read(_READ_BLOCK):
                yield block
        finally:
            self._body.close()

    def close(self) -> None:
        self._body.close()


class PartBody(Payload):
    """A part's bytes, handed to S3 without being copied.

    botocore sees a seekable file (`read`/`seek`/`tell`/`len`: it hashes the payload for the
    signature and rewinds it on a retry); aiohttp, which aiobotocore sends with, sees a payload and
    calls `write`. Both read the one memoryview. (A `bytes` body is copied once more by aiohttp: on
    Python < 3.12.9 it joins the request head and the body into one buffer; a `bytearray` twice.)
    The first write, which aiohttp joins with the head, is kept small; the rest goes to the
    transport as a view of the buffer. Like any file-like body, it makes botocore send
    `Expect: 100-continue` (S3 and SeaweedFS answer it). This relies on aiobotocore's default
    aiohttp session, which `ObjectStore` uses."""

    _autoclose = True

    def __init__(self, data: memoryview) -> None:
        super().__init__(data, content_type="application/octet-stream")
        self._view = data
        self._size = data.nbytes
        self._position = 0

    def __len__(self) -> int:
        return self._view.nbytes

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._view.nbytes}[whence]
        self._position = max(0, min(self._view.nbytes, base + offset))
        return self._position

    def read(self, amount: int | None = -1) -> bytes:
        end = self._view.nbytes if amount is None or amount < 0 else self._position + amount
        chunk = bytes(self._view[self._position : end])
        self._position += len(chunk)
        return chunk

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes(self._view).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        view = self._view if content_length is None else self._view[:content_length]
        await writer.write(view[:_FIRST_WRITE])
        if view.nbytes > _FIRST_WRITE:
            await writer.write(view[_FIRST_WRITE:])


class IngestStore(ObjectStore):
    upload_part_bytes: int = MIN_PART_BYTES

    @classmethod
    def from_settings(cls, settings: Settings) -> ObjectStore:
        """An IngestStore (typed as the base's, like the method it overrides); the part size of
        streamed uploads comes from `IngestSettings.upload_part_bytes`."""
        store = super().from_settings(settings)
        cast(IngestStore, store).upload_part_bytes = int(
            getattr(settings, "upload_part_bytes", MIN_PART_BYTES)
        )
        return store

    async def open_read(self, key: str) -> ObjectReader:
        """Start reading an object; ObjectNotFoundError when it is missing."""
        try:
            response = await self._client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}:
                raise ObjectNotFoundError(key) from error
            raise
        length = response.get("ContentLength")
        return ObjectReader(
            content_length=int(length) if length is not None else None, _body=response["Body"]
        )

    async def upload_stream(
        self,
        key: str,
        blocks: AsyncIterator[bytes | memoryview],
        *,
        content_type: str = "application/octet-stream",
    ) -> int:
        """Upload a stream of any length; returns the bytes written. Memory: at most two part
        buffers (a stream shorter than a part: its own size).

        A stream shorter than one part becomes a single PUT. If the stream raises (a size limit, a
        client that went away) or a part fails, the part in flight is cancelled and the multipart
        upload aborted, so no partial object or orphaned parts are left, and the error propagates."""
        part_size = self.upload_part_bytes
        buffer: bytearray | None = None  # being filled
        in_flight: bytearray | None = None  # being sent (by `sending`)
        spare: bytearray | None = None  # free: the one sent before
        filled = total = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        sending: asyncio.Task[dict[str, Any]] | None = None

        async def send_part(number: int, body: memoryview) -> dict[str, Any]:
            answer = await self._client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=PartBody(body)
            )
            return {"PartNumber": number, "ETag": answer["ETag"]}

        try:
            async for block in blocks:
                total += len(block)
                data = memoryview(block)
                while data:
                    if buffer is None:
                        # The first buffer grows with the data (slice assignment past its end
                        # appends), so a small upload holds its own size, not a whole part; later
                        # ones reuse the part-sized buffer sent before.
                        buffer, spare = (spare if spare is not None else bytearray()), None
                    take = min(len(data), part_size - filled)
                    buffer[filled : filled + take] = data[:take]
                    filled += take
                    data = data[take:]
                    if filled < part_size:
                        continue
                    if upload_id is None:
                        created = await self._client.create_multipart_upload(
                            Bucket=self.bucket, Key=key, ContentType=content_type
                        )
                        upload_id = created["UploadId"]
                    if sending is not None:
                        parts.append(await sending)
                        spare = in_flight
                    sending = asyncio.create_task(send_part(len(parts) + 1, memoryview(buffer)))
                    in_flight, buffer, filled = buffer, None, 0
            if sending is not None:
                parts.append(await sending)
                sending = in_flight = spare = None
            rest = memoryview(buffer)[:filled] if buffer is not None else memoryview(b"")
            if upload_id is None:
                await self._client.put_object(
                    Bucket=self.bucket, Key=key, Body=PartBody(rest), ContentType=content_type
                )
                return total
            if filled:
                parts.append(await send_part(len(parts) + 1, rest))
            await self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            return total
        except BaseException:
            if sending is not None:
                sending.cancel()
                await asyncio.wait([sending])
                if not sending.cancelled():
                    sending.exception()  # retrieved: the error that matters is the one propagating
            if upload_id is not None:
                with contextlib.suppress(Exception):
                    await self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise
