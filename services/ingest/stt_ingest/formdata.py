"""A streaming `multipart/form-data` reader.

Starlette's form parsing spools files to disk past 1 MB; an upload here must go to S3 as it arrives,
never whole into memory or onto local disk. This reader drives `python_multipart`'s push parser from
the ASGI body stream and hands out parts one at a time: text fields (small, size-limited, kept) and the
file part, whose bytes are an async iterator pulled chunk by chunk (at most one network chunk is held).
The file's bytes are memoryviews of the network chunks, not copies (the parser hands out ranges of
the very `bytes` object it was fed, which is immutable).

Fields may come before or after the file; the caller reads the file before asking for the next item.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

_MAX_HEADER_BYTES = 8 * 1024


class FormError(Exception):
    """The body is not an acceptable form; `status` and `code` become the problem."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class ClientGoneError(Exception):
    """The client disconnected (or its body stream broke) before the body was complete."""


@dataclass(frozen=True)
class Field:
    name: str
    value: str


@dataclass(frozen=True)
class FilePart:
    name: str
    filename: str
    content_type: str | None


def boundary_of(content_type: str | None) -> bytes:
    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data":
        raise FormError(415, "unsupported_content_type", "The body must be multipart/form-data.")
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise FormError(400, "invalid_multipart", "The multipart boundary is missing or invalid.")
    return boundary


class StreamingForm:
    """Reads a multipart body part by part. `max_field_bytes` bounds each text field; `max_bytes`
    bounds the whole body (the caller bounds the file itself)."""

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        content_type: str | None,
        *,
        max_fields: int,
        max_field_bytes: int,
        max_bytes: int,
        idle_timeout: float,
    ) -> None:
        self._chunks = chunks
        self._max_fields = max_fields
        self._max_field_bytes = max_field_bytes
        self._max_bytes = max_bytes
        self._idle_timeout = idle_timeout
        self._events: deque[tuple[str, object]] = deque()
        self._header_name = b""
        self._header_value = b""
        self._header_bytes = 0
        self._disposition = b""
        self._part_type = b""
        self._fields = 0
        self._files = 0
        self._ended = False
        self._exhausted = False
        self._received = 0
        self._in_file = False
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._on_part_begin,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_end": self._on_end,
        }
        self._parser = MultipartParser(boundary_of(content_type), callbacks)

    @property
    def received_bytes(self) -> int:
        return self._received

    # -- parser callbacks (synchronous: they only queue events) ----------------------------------

    def _on_part_begin(self) -> None:
        self._header_name = self._header_value = self._disposition = self._part_type = b""
        self._header_bytes = 0

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_bytes += end - start
        self._header_name += data[start:end]
        self._check_header_size()

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_bytes += end - start
        self._header_value += data[start:end]
        self._check_header_size()

    def _check_header_size(self) -> None:
        if self._header_bytes > _MAX_HEADER_BYTES:
            raise FormError(400, "invalid_multipart", "A part's headers are too large.")

    def _on_header_end(self) -> None:
        name = self._header_name.strip().lower()
        if name == b"content-disposition":
            self._disposition = self._header_value
        elif name == b"content-type":
            self._part_type = self._header_value
        self._header_name = self._header_value = b""

    def _on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self._disposition.decode("latin-1"))
        if disposition != b"form-data" or b"name" not in options:
            raise FormError(
                400, "invalid_multipart", 'Every part needs "Content-Disposition: form-data; name=…".'
            )
        name = options[b"name"].decode("utf-8", errors="replace")
        if b"filename" in options:
            self._files += 1
            filename = options[b"filename"].decode("utf-8", errors="replace")
            content_type = self._part_type.decode("latin-1").strip() or None
            self._events.append(("file", FilePart(name=name, filename=filename, content_type=content_type)))
        else:
            self._fields += 1
            if self._fields > self._max_fields:
                raise FormError(
                    422, "too_many_fields", f"At most {self._max_fields} form fields are accepted."
                )
            self._events.append(("field", name))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self._events.append(("data", memoryview(data)[start:end]))

    def _on_part_end(self) -> None:
        self._events.append(("end", None))

    def _on_end(self) -> None:
        self._ended = True

    # -- pulling ---------------------------------------------------------------------------------

    async def _feed(self) -> bool:
        """Read one chunk from the network into the parser; False when the body has ended."""
        if self._exhausted:
            return False
        try:
            # `asyncio.timeout`, not `wait_for`: no task per network chunk.
            async with asyncio.timeout(self._idle_timeout):
                chunk = await anext(self._chunks)
        except StopAsyncIteration:
            self._exhausted = True
            self._parser.finalize()
            return False
        except TimeoutError as exc:
            raise FormError(
                408, "upload_timeout", f"The upload sent nothing for {self._idle_timeout:.0f} seconds."
            ) from exc
        except FormError:
            raise
        except Exception as exc:  # starlette's ClientDisconnect, a broken connection
            raise ClientGoneError(str(exc)) from exc
        self._received += len(chunk)
        if self._received > self._max_bytes:
            raise FormError(413, "payload_too_large", "The request body is larger than allowed.")
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise FormError(400, "invalid_multipart", "The multipart body is malformed.") from exc
        return True

    async def _next_event(self) -> tuple[str, object] | None:
        while not self._events:
            if not await self._feed():
                if not self._ended:
                    raise FormError(
                        400, "invalid_multipart", "The multipart body ended before its final boundary."
                    )
                return None
        return self._events.popleft()

    async def next_item(self) -> Field | FilePart | None:
        """The next part: a complete text field, or a file part whose bytes `file_data()` yields.
        None at the end of the body."""
        if self._in_file:
            raise RuntimeError("read the file part's data before asking for the next part")
        event = await self._next_event()
        if event is None:
            return None
        kind, payload = event
        if kind == "file":
            assert isinstance(payload, FilePart)
            self._in_file = True
            return payload
        if kind != "field":
            raise FormError(400, "invalid_multipart", "The multipart body is malformed.")
        name = str(payload)
        value = bytearray()
        while True:
            event = await self._next_event()
            if event is None:
                raise FormError(400, "invalid_multipart", "The multipart body ended inside a field.")
            kind, data = event
            if kind == "end":
                break
            assert isinstance(data, memoryview)
            value.extend(data)
            if len(value) > self._max_field_bytes:
                raise FormError(
                    422,
                    "field_too_large",
                    f"Form field {name!r} is longer than {self._max_field_bytes} bytes.",
                )
        try:
            return Field(name=name, value=value.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise FormError(422, "invalid_field_encoding", f"Form field {name!r} is not UTF-8.") from exc

    async def file_data(self) -> AsyncIterator[memoryview]:
        """The bytes of the current file part, as they arrive."""
        if not self._in_file:
            raise RuntimeError("no file part is open")
        while True:
            event = await self._next_event()
            if event is None:
                raise FormError(400, "invalid_multipart", "The multipart body ended inside the file.")
            kind, data = event
            if kind == "end":
                self._in_file = False
                return
            assert isinstance(data, memoryview)
            yield data

    async def drain(self) -> None:
        """Read the rest of a file part without keeping it."""
        if self._in_file:
            async for _ in self.file_data():
                pass
