"""`stt follow` / `submit --wait` (`stt_client.Client.wait`): the progress stream (SSE) when the server
has one, polling when it answers the JSON timeline (an older server), and resuming with
`Last-Event-ID` when a stream ends before the job. The server is an `httpx.MockTransport` (real
servers: tests/e2e/test_cli.py, tests/client/)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from stt_client import Client

JOB = "0b7c9f1e-5f1a-4d55-9b43-0a6f0d5c7e11"


def _event(event_id: int, to_status: str | None, **detail: Any) -> str:
    item = {"at": "2026-11-24T10:00:00Z", "stage": "x", "from_status": None, "to_status": to_status}
    name = "status" if to_status else "progress"
    return f"id: {event_id}\nevent: {name}\ndata: {json.dumps({**item, 'detail': detail})}\n\n"


class FakeServer:
    """Jobs whose status follows a script; counts what the client asks."""

    def __init__(self, statuses: list[str], streams: list[str] | None) -> None:
        self.statuses = statuses
        self.streams = streams  # bodies of successive streams; None: an older server (JSON only)
        self.job_reads = 0
        self.stream_requests: list[httpx.Request] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == f"/api/v1/jobs/{JOB}":
            status = self.statuses[min(self.job_reads, len(self.statuses) - 1)]
            self.job_reads += 1
            return httpx.Response(200, json={"id": JOB, "status": status, "progress": {}})
        if request.url.path == f"/api/v1/jobs/{JOB}/events":
            self.stream_requests.append(request)
            if self.streams is None:
                return httpx.Response(200, json={"job_id": JOB, "items": []})
            body = self.streams.pop(0)
            return httpx.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})
        return httpx.Response(404, json={"code": "not_found"})

    def client(self) -> Client:
        return Client("http://stt.test", "key", transport=httpx.MockTransport(self.handler))


def test_follow_uses_the_stream_and_reads_the_job_only_at_events() -> None:
    stream = "retry: 10\n\n" + _event(1, "TRANSCRIBING") + ": keep-alive\n\n"
    stream += _event(2, None, chunk_index=0) + _event(3, "COMPLETED")
    server = FakeServer(["TRANSCRIBING", "TRANSCRIBING", "TRANSCRIBING", "COMPLETED"], [stream])
    seen: list[str] = []
    with server.client() as client:
        job = client.wait(JOB, on_update=lambda job: seen.append(job["status"]), poll_interval=0.01)
        assert client.streams_opened == 1
    assert job["status"] == "COMPLETED"
    assert seen == ["TRANSCRIBING", "TRANSCRIBING", "TRANSCRIBING", "COMPLETED"]
    assert server.job_reads == 4  # the first look, then one per event: no polling
    request = server.stream_requests[0]
    assert request.headers["accept"] == "text/event-stream"
    assert request.url.params["follow"] == "true"
    assert "last-event-id" not in request.headers


def test_a_stream_that_ends_early_is_resumed_after_the_last_event() -> None:
    first = "retry: 10\n\n" + _event(7, "TRANSCRIBING")  # then the server's time limit
    second = "retry: 10\n\n" + _event(8, "COMPLETED")
    server = FakeServer(["TRANSCRIBING", "TRANSCRIBING", "TRANSCRIBING", "COMPLETED"], [first, second])
    with server.client() as client:
        job = client.wait(JOB, poll_interval=0.01)
    assert job["status"] == "COMPLETED"
    assert [r.headers.get("last-event-id") for r in server.stream_requests] == [None, "7"]


def test_an_older_server_is_polled() -> None:
    server = FakeServer(["PENDING", "TRANSCRIBING", "TRANSCRIBING", "FAILED"], None)
    seen: list[str] = []
    with server.client() as client:
        job = client.wait(JOB, on_update=lambda job: seen.append(job["status"]), poll_interval=0.01)
        assert client.streams_opened == 0
    assert job["status"] == "FAILED"
    assert seen == ["PENDING", "TRANSCRIBING", "TRANSCRIBING", "FAILED"]
    assert len(server.stream_requests) == 1  # asked once, then polled


def test_a_finished_job_is_not_streamed() -> None:
    server = FakeServer(["COMPLETED"], [])
    with server.client() as client:
        assert client.wait(JOB)["status"] == "COMPLETED"
    assert server.stream_requests == []
