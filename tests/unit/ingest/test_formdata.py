"""The streaming multipart reader, fed in awkward chunk sizes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from stt_ingest.formdata import ClientGoneError, Field, FilePart, FormError, StreamingForm

BOUNDARY = "----testboundary7MA4YWxkTrZu0gW"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def body(*parts: tuple[str, str | None, bytes]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


async def chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def form(data: bytes, size: int = 7, **limits: int) -> StreamingForm:
    return StreamingForm(
        chunks(data, size),
        CONTENT_TYPE,
        max_fields=limits.get("max_fields", 10),
        max_field_bytes=limits.get("max_field_bytes", 100),
        max_bytes=limits.get("max_bytes", 10_000_000),
        idle_timeout=5,
    )


async def read_all(reader: StreamingForm) -> list[object]:
    items: list[object] = []
    while (item := await reader.next_item()) is not None:
        if isinstance(item, FilePart):
            data = b"".join([block async for block in reader.file_data()])
            items.append((item, data))
        else:
            items.append(item)
    return items


@pytest.mark.parametrize("size", [1, 3, 64, 100_000])
async def test_fields_around_a_file_in_any_chunking(size: int) -> None:
    payload = bytes(range(256)) * 40 + b"\r\n--not-the-boundary\r\n"
    data = body(("language", None, b"en"), ("file", "a.wav", payload), ("prompt", None, "héllo".encode()))
    items = await read_all(form(data, size))
    assert items[0] == Field("language", "en")
    assert isinstance(items[1], tuple)
    part, received = items[1]
    assert part == FilePart(name="file", filename="a.wav", content_type="application/octet-stream")
    assert received == payload
    assert items[2] == Field("prompt", "héllo")


async def test_utf8_filename_is_kept() -> None:
    data = body(("file", "réunion ../x.wav", b"RIFF"))
    items = await read_all(form(data))
    assert items[0][0].filename == "réunion ../x.wav"  # type: ignore[index]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (body(("file", "a.wav", b"x" * 50))[:-10], "invalid_multipart"),  # no final boundary
        (b"garbage without any boundary", "invalid_multipart"),
        (body(("prompt", None, b"x" * 101)), "field_too_large"),
        (body(*[(f"f{i}", None, b"1") for i in range(11)]), "too_many_fields"),
        (body(("prompt", None, b"\xff\xfe")), "invalid_field_encoding"),
        (body(("file", "a.wav", b"x" * 5000)), "payload_too_large"),
    ],
)
async def test_bad_bodies(data: bytes, code: str) -> None:
    with pytest.raises(FormError) as caught:
        await read_all(form(data, max_bytes=4000))
    assert caught.value.code == code


def test_content_type_must_be_multipart_with_boundary() -> None:
    with pytest.raises(FormError) as caught:
        StreamingForm(
            chunks(b"", 1), "application/json", max_fields=1, max_field_bytes=1, max_bytes=1, idle_timeout=1
        )
    assert caught.value.status == 415
    with pytest.raises(FormError) as caught:
        StreamingForm(
            chunks(b"", 1),
            "multipart/form-data",
            max_fields=1,
            max_field_bytes=1,
            max_bytes=1,
            idle_timeout=1,
        )
    assert caught.value.code == "invalid_multipart"


async def test_a_stalled_client_times_out() -> None:
    async def stalled() -> AsyncIterator[bytes]:
        yield body(("file", "a.wav", b"x"))[:60]
        await asyncio.sleep(10)
        yield b""

    reader = StreamingForm(
        stalled(), CONTENT_TYPE, max_fields=1, max_field_bytes=10, max_bytes=1000, idle_timeout=0.1
    )
    with pytest.raises(FormError) as caught:
        await read_all(reader)
    assert caught.value.status == 408


async def test_a_broken_stream_is_a_client_that_went_away() -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield body(("file", "a.wav", b"x" * 100))[:80]
        raise ConnectionResetError("peer went away")

    reader = StreamingForm(
        broken(), CONTENT_TYPE, max_fields=1, max_field_bytes=10, max_bytes=1000, idle_timeout=1
    )
    with pytest.raises(ClientGoneError):
        await read_all(reader)
