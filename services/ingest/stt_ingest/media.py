"""A media byte stream on its way to S3: sniffed on its first bytes, counted, hashed.

`prime()` reads just enough of the source to check the magic signature (so a wrong file is refused
before anything is created); `blocks()` then yields everything, head included, and stops the stream
with `MediaTooLargeError` the moment the running count passes the limit, which makes
`ObjectStore.upload_stream` abort the multipart upload.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

from stt_ingest.sniff import SNIFF_BYTES, Detected, check_media


class MediaTooLargeError(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the file is larger than {limit} bytes")
        self.limit = limit


class MediaStream:
    def __init__(
        self,
        source: AsyncIterator[bytes] | AsyncIterator[memoryview],
        *,
        filename: str | None,
        require_extension: bool,
        max_bytes: int,
        hashed: bool = True,
    ) -> None:
        self._source = source
        self._filename = filename
        self._require_extension = require_extension
        self._max_bytes = max_bytes
        self._head = bytearray()
        self._source_done = False
        # Only an Idempotency-Key needs the digest; hashing 500 MB costs about a second of CPU.
        self._sha256 = hashlib.sha256() if hashed else None
        self.size = 0
        self.detected: Detected | None = None

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            raise RuntimeError("this stream is not hashed")
        return self._sha256.hexdigest()

    async def prime(self) -> Detected:
        """Read the first `SNIFF_BYTES` (or the whole file if shorter) and check them. Raises
        `MediaError` (wrong or empty content, extension) or `MediaTooLargeError`."""
        while len(self._head) < SNIFF_BYTES and not self._source_done:
            try:
                block = await anext(self._source)
            except StopAsyncIteration:
                self._source_done = True
                break
            self._head.extend(block)
            self._count(len(block))
        self.detected = check_media(
            bytes(self._head[:SNIFF_BYTES]),
            self._filename,
            require_extension=self._require_extension,
            whole_file=self._source_done,
        )
        return self.detected

    def _count(self, size: int) -> None:
        self.size += size
        if self.size > self._max_bytes:
            raise MediaTooLargeError(self._max_bytes)

    async def blocks(self) -> AsyncIterator[bytes | memoryview]:
        """Every byte of the file, in order; hashes as it goes (unless `hashed=False`)."""
        if self.detected is None:
            await self.prime()
        digest = self._sha256
        if self._head:
            head = bytes(self._head)
            self._head.clear()
            if digest is not None:
                digest.update(head)
            yield head
        if self._source_done:
            return
        async for block in self._source:
            self._count(len(block))
            if digest is not None:
                digest.update(block)
            yield block

    async def consume(self) -> None:
        """Read everything without storing it (hash and size only)."""
        async for _ in self.blocks():
            pass
