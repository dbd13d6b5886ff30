"""Sequences of calls, several API keys: schemathesis follows the OpenAPI links from the answers that
name a job (the submissions' 202s, a job, a page of jobs, a cancel, a retry, a delete) to every
operation on a job (get, events, result, cancel, retry, delete, webhooks, redeliver), and checks
every answer as `test_contract.py` does (never a 5xx, only documented statuses, content types,
headers and bodies) plus use-after-free (a deleted job answers 404).

Every step is sent with one of three keys. A step on a job the test knows goes with the job's own
key most of the time and with another key otherwise: the other key must get the same 404 as for an
unknown id (or a 422 for a request invalid anyway), never the job, a 409 about its state or a 5xx.
A page of jobs must list only the caller's; a submission (whatever its `Idempotency-Key`) must
never answer with another key's job; and a key's own job, not deleted, is never a 404.

The app is the real one as `test_contract.py` builds it (in-process over ASGI, real Postgres, Redis,
S3 and Kafka, names resolved by a stub, no connection beyond loopback), and half of the submissions
get a real WAV or a public URL so that they create jobs. Each key also owns seeded jobs in every
interesting state (completed with results, failed, cancelled, running): its completed one heads its
pages, and scenarios that start at a job operation with a made-up id mostly get a known job instead.

Checked to fail: a 500 injected into the timeline of a job cancelled through the API, and a result
route that skipped the owner check (409 to another key), were both reported with their scenario.

Bounded in time: `STATEFUL_SCENARIOS` (default 60) scenarios of at most `STATEFUL_STEPS` (default
10) steps, fixed seeds, no shrinking; about 15 s. Raise them for a longer hunt.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import hypothesis
import hypothesis.core
import pytest
import schemathesis
from hypothesis.errors import Flaky
from schemathesis import GenerationMode
from schemathesis.engine.errors import is_inconsistent_replay
from schemathesis.specs.openapi.checks import use_after_free
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import JobStatus
from stt_common.s3 import ObjectStore
from stt_common.settings import Settings
from stt_ingest.app import JOB_ID_SOURCES, JOB_ID_TARGETS, create_app
from tests.integration.ingest.conftest import Key, KeyFactory, ingest_settings
from tests.integration.ingest.test_contract import (
    CHECKS,
    SEEDED_STATES,
    _is_uuid,
    _with_media,
    resolve_to_public,
    seed_job,
)

pytestmark = pytest.mark.timeout(240)

SCENARIOS = int(os.environ.get("STATEFUL_SCENARIOS", "60"))
STEPS = int(os.environ.get("STATEFUL_STEPS", "10"))
SEED = 20261206  # of the first attempt; the next ones add 1
STALLED_ATTEMPTS = 3  # attempts in a row that end before a scenario does
KEYS = 3
OWN_KEY_SHARE = 0.7  # of the steps on a known job, those sent with its owner's key
SUBMIT_PATHS = ("/api/v1/transcribe", "/api/v1/transcribe/url")
SWAP_SHARE = 0.75  # of the made-up job ids, those replaced by a known job's
# Submissions that create jobs: a real file or a public URL, and no field that is mostly refused.
CREATING_FIELDS = {"file", "url", "model", "context_mode", "prompt", "vocabulary"}
PUBLIC_OPERATIONS = ("GET /healthz", "GET /readyz", "GET /metrics")


class Ledger:
    """What the test knows: who owns which job, which were deleted, what was sent."""

    def __init__(self, keys: list[Key]) -> None:
        self.keys = keys
        self.owner: dict[str, int] = {}  # job id -> index of its key
        self.seeded: list[str] = []
        self.deleted: set[str] = set()
        self.random = random.Random(SEED)
        self.submissions = 0
        self.statuses: dict[str, dict[int, int]] = {}  # operation label -> status -> count
        self.foreign = 0  # steps on a known job with another key
        self.failures: list[tuple[Any, BaseException, list[str]]] = []
        self.trail: list[str] = []  # the current scenario's steps
        self.scenarios = 0

    def run(self, machine: type, monkeypatch: pytest.MonkeyPatch) -> None:
        """Runs `SCENARIOS` scenarios, then reports the first failing step, if any.

        The live API's state changes under Hypothesis: a scenario it replays (to confirm a failure,
        or as the prefix of a new one) may find other jobs, and Hypothesis gives up with `Flaky`.
        As schemathesis' own runner does, that ends the attempt without a verdict: the first
        failure is the one recorded, and without one the run goes on from another seed."""
        attempt = stalled = 0
        while self.scenarios < SCENARIOS and not self.failures and stalled < STALLED_ATTEMPTS:
            left, before = SCENARIOS - self.scenarios, self.scenarios
            monkeypatch.setattr(hypothesis.core, "global_force_seed", SEED + attempt)
            attempt += 1
            try:
                machine.run(settings=hypothesis.settings(SETTINGS, max_examples=left))  # type: ignore[attr-defined]
            except (Exception, BaseExceptionGroup) as exc:
                if not (self.failures or isinstance(exc, Flaky) or is_inconsistent_replay(exc)):
                    raise
            else:
                break
            stalled = stalled + 1 if self.scenarios == before else 0
        if self.failures:
            case, first, trail = self.failures[0]
            steps = "\n".join(f"  {step}" for step in trail)
            raise AssertionError(
                f"{len(self.failures)} failing step(s); the first: {case.operation.label} "
                f"{case.path_parameters or ''}, in the scenario\n{steps}\n{first}"
            ) from first

    def count(self, label: str, status: int) -> None:
        by_status = self.statuses.setdefault(label, {})
        by_status[status] = by_status.get(status, 0) + 1


@pytest.fixture
async def ledger(
    make_key: KeyFactory, sessionmaker_: async_sessionmaker[AsyncSession], store: ObjectStore
) -> Ledger:
    keys = [await make_key(rate_limit=1_000_000, name=f"stateful-{index}") for index in range(KEYS)]
    known = Ledger(keys)
    for index, key in enumerate(keys):
        for status, values in SEEDED_STATES:
            if status == JobStatus.COMPLETED:
                # Dated ahead, so that it heads the key's pages of jobs (newest first), which link
                # to it: that is how scenarios reach a job with results.
                values = {**values, "created_at": datetime.now(UTC) + timedelta(hours=1)}
            job_id = str(await seed_job(sessionmaker_, store, key, status, values))
            known.owner[job_id] = index
            known.seeded.append(job_id)
    return known


def _creating(path: str, body: Any) -> Any:
    body = _with_media(path, body)
    wrapped = dataclasses.is_dataclass(body) and not isinstance(body, type)
    form = body.body if wrapped else body
    if not isinstance(form, dict):
        return body
    form = {name: value for name, value in form.items() if name in CREATING_FIELDS}
    return dataclasses.replace(body, body=form) if wrapped else form


def _job_id(case: Any) -> str | None:
    value = (case.path_parameters or {}).get("job_id")
    return str(uuid.UUID(str(value))) if value is not None and _is_uuid(value) else None


def _body(response: Any) -> Any:
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def state_machine(schema: Any, ledger: Ledger) -> type:
    base = schema.as_state_machine()

    class Workflow(base):  # type: ignore[valid-type, misc]
        key_index = 0

        def step(self, input: Any) -> Any:
            # Hypothesis replays a failing scenario to confirm it, and a replay against a live API
            # takes another path (the ids differ); the first failure is the one to report.
            try:
                return super().step(input)
            except (Exception, BaseExceptionGroup) as exc:
                ledger.failures.append((input.case, exc, list(ledger.trail)))
                raise

        def teardown(self) -> None:
            ledger.scenarios += 1
            ledger.trail.clear()
            super().teardown()

        def before_call(self, case: Any) -> None:
            path = case.operation.path
            if path in SUBMIT_PATHS:
                ledger.submissions += 1
                if ledger.submissions % 2 == 0:
                    case.body = _creating(path, case.body)
            job_id = _job_id(case)
            if job_id is not None and job_id not in ledger.owner and ledger.random.random() < SWAP_SHARE:
                # A made-up id (a scenario that starts at a job operation): most get a known job,
                # half of them a seeded one (every state, results).
                job_id = ledger.random.choice(
                    ledger.seeded if ledger.random.random() < 0.5 else list(ledger.owner)
                )
                case.path_parameters = {**case.path_parameters, "job_id": job_id}
            keys = range(len(ledger.keys))
            if job_id in ledger.owner:
                owner = ledger.owner[job_id]
                if ledger.random.random() < OWN_KEY_SHARE:
                    self.key_index = owner
                else:
                    self.key_index = ledger.random.choice([index for index in keys if index != owner])
                    ledger.foreign += 1
            else:
                self.key_index = ledger.random.choice(list(keys))

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": {"X-API-Key": ledger.keys[self.key_index].plaintext}}

        def after_call(self, response: Any, case: Any) -> None:
            super().after_call(response, case)
            label = case.operation.label
            status = response.status_code
            ledger.count(label, status)
            # Schemathesis also leaves the key out, or sends another, on purpose.
            sent = response.request.headers.get("X-API-Key")
            key = next((i for i, known in enumerate(ledger.keys) if known.plaintext == sent), None)
            where = f"{label} with key {key}: {status} {response.content[:500]!r}"
            ledger.trail.append(f"{label} {case.path_parameters or ''} with key {key}: {status}")
            if key is None:
                assert status == 401 or label in PUBLIC_OPERATIONS, where
                return
            job_id = _job_id(case)
            body = _body(response)
            if job_id in ledger.owner:
                owner = ledger.owner[job_id]
                if owner != key:
                    # Another key's job: exactly what an unknown id gets.
                    assert status in (404, 422), f"another key's job {job_id} (owner {owner}): {where}"
                    if status == 404:
                        assert body["code"] == "job_not_found", where
                elif job_id not in ledger.deleted:
                    assert status != 404 or body.get("code") == "result_not_found", f"own job: {where}"
                if owner == key and status == 204 and case.method.upper() == "DELETE":
                    ledger.deleted.add(job_id)
            if case.operation.path in SUBMIT_PATHS and status == 202:
                created = str(body["job_id"])
                assert ledger.owner.setdefault(created, key) == key, f"another key's job: {where}"
            if label == "GET /api/v1/jobs" and status == 200:
                others = [item["id"] for item in body["items"] if ledger.owner.get(item["id"], key) != key]
                assert not others, f"other keys' jobs {others} listed: {where}"

        def validate_response(
            self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            case.validate_response(
                response,
                checks=[*CHECKS, use_after_free],
                transport_kwargs=kwargs or None,
                recorder=self.recorder,
            )

    return Workflow


@pytest.fixture
def stateful_schema(settings: Settings, no_egress: list[str]) -> Any:
    app = create_app(
        ingest_settings(settings, upload_idle_timeout_seconds=5.0, url_fetch_timeout_seconds=5.0),
        resolver=resolve_to_public,
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        max_examples=SCENARIOS,
        no_shrink=True,
        database="none",
    )
    return schema


SETTINGS = hypothesis.settings(
    max_examples=SCENARIOS,
    stateful_step_count=STEPS,
    deadline=None,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    phases=[hypothesis.Phase.generate],
)


def test_the_openapi_document_links_every_job_id_to_every_job_operation(stateful_schema: Any) -> None:
    document = stateful_schema.raw_schema
    for method, path, status, expression in JOB_ID_SOURCES:
        links = document["paths"][path][method]["responses"][status]["links"]
        assert set(links) == set(JOB_ID_TARGETS), (method, path)
        assert {link["parameters"]["job_id"] for link in links.values()} == {expression}


def test_sequences_across_keys_never_fail_or_leak(
    stateful_schema: Any, ledger: Ledger, no_egress: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger.run(state_machine(stateful_schema, ledger), monkeypatch)
    steps = sum(sum(statuses.values()) for statuses in ledger.statuses.values())
    print(f"{ledger.scenarios} scenarios, {steps} steps, {ledger.foreign} with another key's job")
    for label, statuses in sorted(ledger.statuses.items()):
        print(f"  {label}: {dict(sorted(statuses.items()))}")

    # The machine went where it was meant to: jobs were created and followed, with other keys too.
    reached = {label for label, statuses in ledger.statuses.items() if set(statuses) - {401}}
    followed = {f"{method.upper()} {path}" for method, path in JOB_ID_TARGETS.values()}
    assert followed <= reached, sorted(followed - reached)
    assert len(ledger.owner) > KEYS * len(SEEDED_STATES), "no submission created a job"
    assert ledger.foreign, "no step used another key's job"
    # The fetcher connects to checked addresses only: whatever it tried must have been public.
    assert not [url for url in no_egress if not _is_public(httpx.URL(url).host)], no_egress


def _is_public(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_global
    except ValueError:
        return False
