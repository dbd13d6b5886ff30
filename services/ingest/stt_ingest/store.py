"""The shared `ObjectStore` plus a streamed read, so results go to the client without being held
whole in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from stt_common.s3 import ObjectNotFoundError, ObjectStore

_READ_BLOCK = 256 * 1024


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


class IngestStore(ObjectStore):
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
