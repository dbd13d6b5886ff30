"""A small synchronous client of the REST API (`/api/v1`), with errors a person can act on."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx

TERMINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
RESULT_FORMATS = ("txt", "json", "srt", "vtt")

# What to do about an error answer, by HTTP status (the API's problem `code` says what went wrong).
_HINTS = {
    401: "check the API key (--api-key or STT_API_KEY)",
    403: "this key may not do that",
    404: "check the job id; a key sees only its own jobs",
    409: "the job is not in a state that allows this; `stt status JOB` shows where it is",
    413: "the file is larger than the server accepts",
    415: "send audio or video (wav, mp3, m4a, ogg, opus, flac, webm, mp4, mkv, mov, ...)",
    429: "slow down",
}


class ApiError(Exception):
    """An error answer, a refused connection or a timeout, worded for the person at the terminal."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _problem(response: httpx.Response) -> ApiError:
    """An `ApiError` from an RFC 9457 problem body (or whatever the server sent)."""
    code = title = detail = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code, title, detail = body.get("code"), body.get("title"), body.get("detail")
    what = title or response.reason_phrase or "error"
    message = f"HTTP {response.status_code} {what}"
    if code:
        message += f" ({code})"
    if detail and detail != title:
        message += f": {detail}"
    elif body is None and response.text.strip():
        message += f": {' '.join(response.text.split())[:200]}"
    hint = _HINTS.get(response.status_code)
    if response.status_code == 429 and response.headers.get("retry-after"):
        hint = f"rate limited: try again in {response.headers['retry-after']} s"
    elif response.status_code >= 500:
        hint = "the server failed; try again, and tell its operator if it persists"
    if hint:
        message += f" — {hint}"
    return ApiError(message, status=response.status_code, code=code)


class _CountingReader:
    """A file whose reads are reported, so an upload can show a progress bar."""

    def __init__(self, handle: BinaryIO, on_read: Callable[[int], None]) -> None:
        self._handle = handle
        self._on_read = on_read

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._on_read(len(data))
        return data


class SttClient:
    def __init__(
        self,
        api_url: str,
        api_key: str | None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(
            base_url=self.api_url, headers=headers, timeout=timeout, transport=transport
        )
        self.streams_opened = 0  # progress streams this client opened (tests look)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SttClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, *, expect: tuple[int, ...], **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, f"/api/v1{path}", **kwargs)
        except httpx.TimeoutException:
            raise ApiError(f"no answer from {self.api_url} in time; is the server overloaded?") from None
        except httpx.TransportError as exc:
            raise ApiError(
                f"cannot reach the API at {self.api_url} ({type(exc).__name__}: {exc}); "
                "check --api-url / STT_API_URL, or start the local stack with `make up`"
            ) from None
        if response.status_code not in expect:
            raise _problem(response)
        return response

    # ----------------------------------------------------------------------------------- submitting

    def submit_file(
        self,
        path: Path,
        options: dict[str, str | list[str]],
        *,
        idempotency_key: str | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Upload `path` (streamed, never read whole) with form `options`; the 202 body."""
        size = path.stat().st_size
        sent = 0

        def count(n: int) -> None:
            nonlocal sent
            sent += n
            if on_progress:
                on_progress(sent, size)

        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        with path.open("rb") as handle:
            reader = _CountingReader(handle, count)
            # Text fields go first: the server refuses bad options before reading the file.
            response = self._call(
                "POST",
                "/transcribe",
                expect=(200, 202),
                data=options,
                files={"file": (path.name, reader, "application/octet-stream")},
                headers=headers,
                timeout=httpx.Timeout(60.0, write=None),
            )
        return dict(response.json())

    def submit_url(
        self, url: str, options: dict[str, Any], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = self._call(
            "POST", "/transcribe/url", expect=(200, 202), json={"url": url, **options}, headers=headers
        )
        return dict(response.json())

    # ---------------------------------------------------------------------------------------- jobs

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/jobs/{job_id}", expect=(200,)).json())

    def providers(self) -> dict[str, Any]:
        return dict(self._call("GET", "/providers", expect=(200,)).json())

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/jobs/{job_id}/events", expect=(200,)).json()["items"])

    def jobs(self, *, status: str | None = None, limit: int = 20) -> Iterator[dict[str, Any]]:
        """Every job of this key, newest first, following the cursor until `limit` jobs."""
        cursor: str | None = None
        given = 0
        while given < limit:
            params: dict[str, Any] = {"limit": min(limit - given, 100)}
            if status:
                params["status"] = status
            if cursor:
                params["cursor"] = cursor
            page = self._call("GET", "/jobs", expect=(200,), params=params).json()
            for item in page["items"]:
                yield item
                given += 1
            cursor = page.get("next_cursor")
            if not cursor or not page["items"]:
                return

    def result(self, job_id: str, fmt: str) -> bytes:
        return self._call("GET", f"/jobs/{job_id}/result", expect=(200,), params={"format": fmt}).content

    def cancel(self, job_id: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/jobs/{job_id}/cancel", expect=(200, 202)).json())

    def retry(self, job_id: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/jobs/{job_id}/retry", expect=(200, 202)).json())

    def delete(self, job_id: str) -> None:
        self._call("DELETE", f"/jobs/{job_id}", expect=(204,))

    def follow(
        self,
        job_id: str,
        on_update: Callable[[dict[str, Any]], None],
        *,
        interval: float = 1.0,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Follow the job until it ends, calling `on_update` with the job at every change; the last
        answer. Uses the server's progress stream (Server-Sent Events): the job is read again only
        when an event says it changed. A server without one (it answers the JSON timeline) is polled
        every `interval` seconds instead."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.job(job_id)
        on_update(job)
        last_event_id: str | None = None
        while job["status"] not in TERMINAL_STATUSES:
            self._check_deadline(job_id, job, deadline, timeout)
            outcome = self._stream(job_id, on_update, last_event_id, deadline)
            if outcome is None:  # an older server: no stream
                return self._poll(job_id, on_update, interval=interval, deadline=deadline, timeout=timeout)
            streamed, last_event_id, retry = outcome
            if streamed is not None and streamed["status"] in TERMINAL_STATUSES:
                return streamed
            # The stream ended before the job (its time limit, a dropped connection): read the job,
            # then resume after the last event seen.
            job = self.job(job_id)
            on_update(job)
            if job["status"] not in TERMINAL_STATUSES:
                time.sleep(retry)
        return job

    def _stream(
        self,
        job_id: str,
        on_update: Callable[[dict[str, Any]], None],
        last_event_id: str | None,
        deadline: float | None,
    ) -> tuple[dict[str, Any] | None, str | None, float] | None:
        """Reads one progress stream until it ends, reading the job (and calling `on_update`) at each
        event; (the job as last read, the last event id, seconds to wait before resuming), or None
        when the server answers JSON (it has no streams)."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        job: dict[str, Any] | None = None
        retry = 1.0
        try:
            with self._http.stream(
                "GET",
                f"/api/v1/jobs/{job_id}/events",
                params={"follow": "true"},
                headers=headers,
                timeout=httpx.Timeout(60.0, read=120.0),  # the server sends heartbeats well before
            ) as response:
                if response.status_code != 200:
                    response.read()
                    raise _problem(response)
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    return None
                self.streams_opened += 1
                fields: dict[str, str] = {}
                for line in response.iter_lines():
                    if deadline is not None and time.monotonic() > deadline:
                        break
                    if line.startswith(":"):  # a heartbeat
                        continue
                    if line:
                        name, _, value = line.partition(":")
                        fields[name] = value.removeprefix(" ")
                        continue
                    if fields.get("retry", "").isdigit():
                        retry = int(fields["retry"]) / 1000
                    if "data" in fields:
                        last_event_id = fields.get("id", last_event_id)
                        job = self.job(job_id)
                        on_update(job)
                        item = _json_or_none(fields["data"])
                        if isinstance(item, dict) and item.get("to_status") in TERMINAL_STATUSES:
                            return job, last_event_id, retry
                    fields = {}
        except httpx.TransportError:
            pass  # resumed by the caller (which reports a server that stays unreachable)
        return job, last_event_id, retry

    def _poll(
        self,
        job_id: str,
        on_update: Callable[[dict[str, Any]], None],
        *,
        interval: float,
        deadline: float | None,
        timeout: float | None,
    ) -> dict[str, Any]:
        """Poll the job until it ends, calling `on_update` with every answer; the last answer."""
        while True:
            job = self.job(job_id)
            on_update(job)
            if job["status"] in TERMINAL_STATUSES:
                return job
            self._check_deadline(job_id, job, deadline, timeout)
            time.sleep(interval)

    @staticmethod
    def _check_deadline(
        job_id: str, job: dict[str, Any], deadline: float | None, timeout: float | None
    ) -> None:
        if deadline is not None and timeout is not None and time.monotonic() > deadline:
            raise ApiError(
                f"job {job_id} is still {job['status']} after {timeout:g} s; "
                f"it goes on: `stt follow {job_id}` picks it up again"
            )


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
