"""`Client`: the synchronous client. `AsyncClient` (stt_client._async) is the same, awaited."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Literal, Unpack, cast, overload

import httpx

from stt_client._core import (
    API_PREFIX,
    DEFAULT_TIMEOUT,
    USER_AGENT,
    CountingReader,
    Repeat,
    RetryPolicy,
    SSEParser,
    UploadProgress,
    auth_headers,
    connection_error,
    form_fields,
    is_event_stream,
    is_url,
    new_idempotency_key,
    stream_request_headers,
    stream_timeout,
    upload_name,
    url_body,
)
from stt_client.errors import WaitTimeoutError, error_from_response
from stt_client.models import (
    TERMINAL_STATUSES,
    Job,
    JobEvent,
    JobPage,
    JobStatus,
    JobWebhooks,
    ProviderList,
    ResultFormat,
    SubmitOptions,
    Submitted,
    TextFormat,
    Transcript,
)

OnUpdate = Callable[[Job], None]


class Client:
    """A client of the speech-to-text API.

    >>> with Client("http://127.0.0.1:18000", api_key="stt_...") as stt:
    ...     job = stt.submit("talk.mp3", language="en")
    ...     stt.wait(job["job_id"])
    ...     print(stt.result(job["job_id"], "txt"))

    The key goes in `X-API-Key` (or `Authorization: Bearer` with `bearer=True`). Requests are
    retried on 429, 5xx and broken connections as `retry` says (`RetryPolicy`; `max_retries=0`: never).
    Errors are `ApiError` (the API's RFC 9457 problem: `code`, `detail`, `status`, `hint`) or
    `ApiConnectionError`."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        bearer: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        max_retries: int | None = None,
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._retry = retry or RetryPolicy()
        if max_retries is not None:
            self._retry = dataclasses.replace(self._retry, max_retries=max_retries)
        self._timeout = timeout
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"User-Agent": USER_AGENT, **auth_headers(api_key, bearer), **(headers or {})},
            timeout=timeout,
            transport=transport,
        )
        self.streams_opened = 0  # progress streams (SSE) this client has read

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------- requests

    def _send(
        self,
        method: str,
        path: str,
        *,
        expect: tuple[int, ...],
        repeat: Repeat = Repeat.SAFE,
        **kwargs: Any,
    ) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(method, API_PREFIX + path, **kwargs)
            except httpx.TransportError as exc:
                delay = self._retry.after_exception(attempt, exc, repeat)
                if delay is None:
                    raise connection_error(self.base_url, exc) from exc
            else:
                if response.status_code in expect:
                    return response
                error = error_from_response(response)
                delay = self._retry.after_status(attempt, error, repeat)
                if delay is None:
                    raise error
            attempt += 1
            time.sleep(delay)

    def _json(self, method: str, path: str, *, expect: tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        return self._send(method, path, expect=expect, **kwargs).json()

    # -------------------------------------------------------------------------------- submitting

    def submit(
        self,
        source: str | os.PathLike[str] | bytes,
        *,
        filename: str | None = None,
        idempotency_key: str | None = None,
        on_upload: UploadProgress | None = None,
        **options: Unpack[SubmitOptions],
    ) -> Submitted:
        """Submit an http(s) URL (the server fetches it), a file path or bytes (uploaded; bytes need a
        `filename` whose extension says what they are). Options: `SubmitOptions`.

        An `Idempotency-Key` is made for the submission (or given) and sent on every retry, so a
        retry after a lost answer returns the same job instead of making a second one."""
        if isinstance(source, bytes):
            return self.submit_bytes(
                source, upload_name(source, filename), idempotency_key=idempotency_key, on_upload=on_upload,
                **options,
            )  # fmt: skip
        if is_url(source):
            return self.submit_url(str(source), idempotency_key=idempotency_key, **options)
        return self.submit_file(
            source, filename=filename, idempotency_key=idempotency_key, on_upload=on_upload, **options
        )

    def submit_url(
        self, url: str, *, idempotency_key: str | None = None, **options: Unpack[SubmitOptions]
    ) -> Submitted:
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        body = url_body(url, options)
        return cast(
            Submitted, self._json("POST", "/transcribe/url", expect=(200, 202), json=body, headers=headers)
        )

    def submit_file(
        self,
        path: str | os.PathLike[str],
        *,
        filename: str | None = None,
        idempotency_key: str | None = None,
        on_upload: UploadProgress | None = None,
        **options: Unpack[SubmitOptions],
    ) -> Submitted:
        """Upload a file, streamed (never read whole into memory)."""
        path = Path(path)
        with path.open("rb") as handle:
            return self._upload(
                handle, path.stat().st_size, upload_name(path, filename), idempotency_key, on_upload, options
            )

    def submit_bytes(
        self,
        data: bytes,
        filename: str,
        *,
        idempotency_key: str | None = None,
        on_upload: UploadProgress | None = None,
        **options: Unpack[SubmitOptions],
    ) -> Submitted:
        return self._upload(io.BytesIO(data), len(data), filename, idempotency_key, on_upload, options)

    def _upload(
        self,
        handle: IO[bytes],
        size: int,
        filename: str,
        idempotency_key: str | None,
        on_upload: UploadProgress | None,
        options: SubmitOptions,
    ) -> Submitted:
        fields: dict[str, list[str]] = {}
        for name, value in form_fields(options):
            fields.setdefault(name, []).append(value)
        reader = CountingReader(handle, size, on_upload)
        # httpx sends the text fields before the file: the server refuses bad options before the upload.
        return cast(
            Submitted,
            self._json(
                "POST",
                "/transcribe",
                expect=(200, 202),
                data=fields,
                files={"file": (filename, reader, "application/octet-stream")},
                headers={"Idempotency-Key": idempotency_key or new_idempotency_key()},
                timeout=httpx.Timeout(self._timeout, write=None),
            ),
        )

    # -------------------------------------------------------------------------------------- jobs

    def get_job(self, job_id: str) -> Job:
        return cast(Job, self._json("GET", f"/jobs/{job_id}"))

    def list_jobs(
        self,
        *,
        status: JobStatus | Sequence[JobStatus] | None = None,
        created_after: str | None = None,
        created_before: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of this key's jobs, newest first (`next_cursor` gets the next)."""
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = [status] if isinstance(status, str) else list(status)
        if created_after:
            params["created_after"] = created_after
        if created_before:
            params["created_before"] = created_before
        if cursor:
            params["cursor"] = cursor
        return cast(JobPage, self._json("GET", "/jobs", params=params))

    def iter_jobs(
        self,
        *,
        status: JobStatus | Sequence[JobStatus] | None = None,
        created_after: str | None = None,
        created_before: str | None = None,
        max_items: int | None = None,
        page_size: int = 100,
    ) -> Iterator[Job]:
        """Every job of this key, newest first, page after page (`max_items` at most)."""
        cursor: str | None = None
        given = 0
        while max_items is None or given < max_items:
            size = page_size if max_items is None else min(page_size, max_items - given)
            page = self.list_jobs(
                status=status, created_after=created_after, created_before=created_before, limit=size,
                cursor=cursor,
            )  # fmt: skip
            for job in page["items"]:
                yield job
                given += 1
            cursor = page["next_cursor"]
            if not cursor or not page["items"]:
                return

    def events(self, job_id: str) -> list[JobEvent]:
        """The job's timeline, oldest first."""
        return cast(list[JobEvent], self._json("GET", f"/jobs/{job_id}/events")["items"])

    def cancel(self, job_id: str) -> Job:
        return cast(
            Job, self._json("POST", f"/jobs/{job_id}/cancel", expect=(200, 202), repeat=Repeat.UNSAFE)
        )

    def retry(self, job_id: str) -> Job:
        """Retry a FAILED or CANCELLED job: only its unfinished chunks are done again."""
        return cast(Job, self._json("POST", f"/jobs/{job_id}/retry", expect=(200, 202), repeat=Repeat.UNSAFE))

    def delete(self, job_id: str) -> None:
        """Delete a finished job, its files and its rows."""
        self._send("DELETE", f"/jobs/{job_id}", expect=(204,), repeat=Repeat.UNSAFE)

    def providers(self) -> ProviderList:
        return cast(ProviderList, self._json("GET", "/providers"))

    def webhooks(self, job_id: str) -> JobWebhooks:
        """The job's webhook deliveries, each with every attempt."""
        return cast(JobWebhooks, self._json("GET", f"/jobs/{job_id}/webhooks"))

    def redeliver_webhook(self, job_id: str) -> JobWebhooks:
        """Send the job's latest webhook event again (same `webhook-id`)."""
        return cast(
            JobWebhooks,
            self._json("POST", f"/jobs/{job_id}/webhooks/redeliver", expect=(202,), repeat=Repeat.UNSAFE),
        )

    # ----------------------------------------------------------------------------------- results

    @overload
    def result(self, job_id: str, format: Literal["json"] = "json") -> Transcript: ...
    @overload
    def result(self, job_id: str, format: TextFormat) -> str: ...
    def result(self, job_id: str, format: ResultFormat = "json") -> Transcript | str:
        """A COMPLETED job's transcript: the JSON document (`Transcript`), or txt, srt or vtt text."""
        data = self.result_bytes(job_id, format)
        if format == "json":
            return cast(Transcript, json.loads(data))
        return data.decode("utf-8")

    def result_bytes(self, job_id: str, format: ResultFormat = "json") -> bytes:
        """The transcript's bytes as the server stores them."""
        return self._send("GET", f"/jobs/{job_id}/result", expect=(200,), params={"format": format}).content

    # ------------------------------------------------------------------------------------ waiting

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        on_update: OnUpdate | None = None,
    ) -> Job:
        """Wait until the job is COMPLETED, FAILED or CANCELLED, and return it.

        Follows the job's progress stream (`GET /jobs/{id}/events?follow=true`, Server-Sent
        Events), reading the job again at each event (and calling `on_update` with it); a stream
        that ends early is resumed with `Last-Event-ID`. A server that answers with the JSON
        timeline instead (no streams) is polled every `poll_interval` seconds. `WaitTimeoutError`
        after `timeout` seconds; the job goes on on the server."""
        deadline = None if timeout is None else time.monotonic() + timeout
        report: OnUpdate = on_update or (lambda job: None)
        job = self.get_job(job_id)
        report(job)
        last_event_id: str | None = None
        while job["status"] not in TERMINAL_STATUSES:
            self._check_deadline(job, deadline, timeout)
            outcome = self._follow(job_id, report, last_event_id, deadline)
            if outcome is None:  # no streams here
                return self._poll(job_id, report, poll_interval, deadline, timeout)
            streamed, last_event_id, retry = outcome
            if streamed is not None and streamed["status"] in TERMINAL_STATUSES:
                return streamed
            # The stream ended before the job did (the server's time limit, a broken connection):
            # read the job, then resume after the last event seen.
            job = self.get_job(job_id)
            report(job)
            if job["status"] not in TERMINAL_STATUSES:
                self._check_deadline(job, deadline, timeout)
                time.sleep(retry if deadline is None else min(retry, max(0.0, deadline - time.monotonic())))
        return job

    def _follow(
        self, job_id: str, report: OnUpdate, last_event_id: str | None, deadline: float | None
    ) -> tuple[Job | None, str | None, float] | None:
        """Reads one progress stream until it ends; (the job as last read, the last event id, seconds
        to wait before resuming), or None when the server has no streams."""
        parser = SSEParser(last_event_id)
        job: Job | None = None
        left = None if deadline is None else deadline - time.monotonic()
        try:
            with self._http.stream(
                "GET",
                f"{API_PREFIX}/jobs/{job_id}/events",
                params={"follow": "true"},
                headers=stream_request_headers(last_event_id),
                timeout=stream_timeout(left),
            ) as response:
                if response.status_code != 200:
                    response.read()
                    error = error_from_response(response)
                    if error.status in RetryPolicy.RETRY_STATUSES:  # e.g. 503 too_many_streams: "poll"
                        return None
                    raise error
                if not is_event_stream(response.headers):
                    return None
                self.streams_opened += 1
                for line in response.iter_lines():
                    event = parser.feed(line)
                    if event is not None:
                        job = self.get_job(job_id)
                        report(job)
                        if job["status"] in TERMINAL_STATUSES:
                            break
                    if deadline is not None and time.monotonic() > deadline:
                        break
        except httpx.TransportError:
            pass  # resumed by the caller, which reads the job (and reports a server that stays away)
        return job, parser.last_event_id, parser.retry

    def _poll(
        self, job_id: str, report: OnUpdate, interval: float, deadline: float | None, timeout: float | None
    ) -> Job:
        while True:
            job = self.get_job(job_id)
            report(job)
            if job["status"] in TERMINAL_STATUSES:
                return job
            self._check_deadline(job, deadline, timeout)
            time.sleep(interval)

    @staticmethod
    def _check_deadline(job: Job, deadline: float | None, timeout: float | None) -> None:
        if deadline is not None and timeout is not None and time.monotonic() >= deadline:
            raise WaitTimeoutError(job, timeout)
