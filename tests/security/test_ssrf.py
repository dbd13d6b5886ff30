"""SSRF, end to end, against the live components: every hostile URL below aims at a loopback canary
(a real socket on 127.0.0.1, and ::1 where the host has IPv6) and must never reach it.

* URL ingest: the real app (lifespan, Postgres, Redis, S3, Kafka) refuses each one at
  `POST /api/v1/transcribe/url` with a 422 problem and a stable code; the same URL given as a
  `webhook_url` is refused at submission where no DNS is needed.
* Redirects: a source on the one allow-listed address (127.0.0.3, the operator's
  `ssrf_allow_networks`) redirects to the canary in every spelling: the job fails with the reason.
* Webhook delivery at send time: the notifier (handler + delivery loop, real Postgres) is given
  each URL as a stored webhook and must record the delivery FAILED with the refusal as the reason;
  and a name that answered with a public address when the job was submitted and answers with an
  internal one at delivery (DNS rebinding) is refused then.

Names resolve through a stub resolver only; connections to anything but loopback are refused by
an in-process guard before a socket exists (`egress_guard`), and the guard's log is checked too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import DeliveryStatus, JobStatus, WebhookAttempt, WebhookDelivery
from stt_common.messages import Envelope, Topic
from stt_common.settings import Settings
from stt_common.ssrf import block_reason
from stt_notifier.handler import NotifierHandler
from stt_notifier.main import make_loop
from tests.helpers import wait_until
from tests.integration.ingest.conftest import Api, AppFactory, Key, KeyFactory
from tests.integration.notifier.conftest import notifier_settings
from tests.integration.notifier.factory import JobFactory, Owner
from tests.security.conftest import (
    BOUNCER_ALLOW,
    BOUNCER_HOST,
    PUBLIC_ADDRESS,
    Bouncer,
    Canary,
    SwitchableResolver,
    egress_guard,
    problem,
)

pytestmark = pytest.mark.timeout(120)

BLOCKED = "url_address_blocked"
HOST_BLOCKED = "url_host_blocked"
INVALID = "url_invalid"
SCHEME = "url_scheme_not_allowed"
USERINFO = "url_credentials_not_allowed"


def _teredo(server: str, client: str) -> str:
    """A Teredo address (2001::/32) naming `server` and, obfuscated, `client`."""
    value = (
        (0x20010000 << 96)
        | (int(ipaddress.IPv4Address(server)) << 64)
        | (0x8000 << 48)
        | (int(ipaddress.IPv4Address(client)) ^ 0xFFFFFFFF)
    )
    return str(ipaddress.IPv6Address(value))


TEREDO_LOOPBACK = _teredo("65.54.227.120", "127.0.0.1")
# Its Teredo server is the allow-listed bouncer, its client the canary: the allow-list must not
# vouch for the loopback address it also carries.
TEREDO_ALLOWED_SERVER = _teredo(BOUNCER_HOST, "127.0.0.1")

FULLWIDTH_LOCALHOST = "".join(chr(ord(letter) + 0xFEE0) for letter in "localhost")

NAMES: dict[str, list[str]] = {
    "public.test": [PUBLIC_ADDRESS],
    "bouncer.test": [BOUNCER_HOST],
    "loop.test": ["127.0.0.1"],
    "loop6.test": ["::1"],
    "meta.test": ["169.254.169.254"],
    "ten.test": ["10.0.0.5"],
    "zone.test": ["fe80::1%2"],
    "nat64.test": ["64:ff9b::7f00:1"],
    "sixtofour.test": ["2002:7f00:1::1"],
    "teredo.test": [TEREDO_LOOPBACK],
    "mapped.test": ["::ffff:127.0.0.1"],
    "zero.test": ["0.0.0.0"],
    "mixed.test": [PUBLIC_ADDRESS, "127.0.0.1"],
    "allowed-and-not.test": [BOUNCER_HOST, "127.0.0.1"],
    "cgnat.test": ["100.64.0.7"],
    "ula.test": ["fd12:3456::1"],
}


@dataclass(frozen=True)
class Case:
    id: str
    url: str  # `{c}` is the canary's port
    code: str
    dns: bool = False  # refused only once the name is resolved (a webhook passes submission)
    source_code: str | None = None  # where the API schema refuses it first (else `code`)
    webhook_code: str | None = None

    def format(self, canary: Canary) -> str:
        return self.url.replace("{c}", str(canary.port))


CASES = [
    # IPv4 spellings (WHATWG / inet_aton forms)
    Case("dotted", "http://127.0.0.1:{c}/a.wav", BLOCKED),
    Case("decimal", "http://2130706433:{c}/a.wav", BLOCKED),
    Case("octal", "http://0177.0.0.1:{c}/a.wav", BLOCKED),
    Case("octal-whole", "http://017700000001:{c}/a.wav", BLOCKED),
    Case("hex", "http://0x7f000001:{c}/a.wav", BLOCKED),
    Case("hex-dotted", "http://0x7f.0x0.0x0.0x1:{c}/a.wav", BLOCKED),
    Case("hex-upper", "http://0X7F.1:{c}/a.wav", BLOCKED),
    Case("short-2", "http://127.1:{c}/a.wav", BLOCKED),
    Case("short-3", "http://127.0.1:{c}/a.wav", BLOCKED),
    Case("zero-padded", "http://127.000.000.001:{c}/a.wav", BLOCKED),
    Case("trailing-dot", "http://127.0.0.1.:{c}/a.wav", BLOCKED),
    Case("zero", "http://0:{c}/a.wav", BLOCKED),
    Case("unspecified", "http://0.0.0.0:{c}/a.wav", BLOCKED),
    Case("uppercase-scheme", "HTTP://127.0.0.1:{c}/a.wav", BLOCKED),
    Case("https", "https://127.0.0.1:{c}/a.wav", BLOCKED),
    Case("metadata", "http://169.254.169.254/latest/meta-data/", BLOCKED),
    Case("metadata-decimal", "http://2852039166/latest/meta-data/", BLOCKED),
    Case("metadata-hex", "http://0xa9fea9fe/latest/meta-data/", BLOCKED),
    Case("metadata-alibaba", "http://100.100.100.200/latest/meta-data/", BLOCKED),
    Case("octet-overflow", "http://127.0.0.256:{c}/a.wav", INVALID),
    Case("five-parts", "http://127.0.0.0.1:{c}/a.wav", INVALID),
    Case("numeric-tld", "http://evil.127:{c}/a.wav", INVALID),
    # percent-encoding
    Case("pct-host", "http://%31%32%37.0.0.1:{c}/a.wav", INVALID),
    Case("pct-dots", "http://127%2e0%2e0%2e1:{c}/a.wav", INVALID),
    Case("pct-name", "http://loca%6chost:{c}/a.wav", INVALID),
    Case("pct-nul", "http://public.test%00.loop.test:{c}/a.wav", INVALID),
    # IDNA and name tricks
    Case("fullwidth-digits", "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:{c}/a.wav", BLOCKED),
    Case("ideographic-dots", "http://127\u30020\u30020\u30021:{c}/a.wav", BLOCKED),
    Case("fullwidth-dots", "http://127\uff0e0\uff0e0\uff0e1:{c}/a.wav", BLOCKED),
    Case("halfwidth-dots", "http://127\uff610\uff610\uff611:{c}/a.wav", BLOCKED),
    Case("circled-letter", "http://\u24dbocalhost:{c}/a.wav", HOST_BLOCKED),
    Case("fullwidth-localhost", f"http://{FULLWIDTH_LOCALHOST}:{{c}}/a.wav", HOST_BLOCKED),
    Case("localhost-upper", "http://LOCALHOST:{c}/a.wav", HOST_BLOCKED),
    Case("localhost-dot", "http://localhost.:{c}/a.wav", HOST_BLOCKED),
    Case("sub-localhost", "http://canary.localhost:{c}/a.wav", HOST_BLOCKED),
    Case("metadata-name", "http://metadata.google.internal./computeMetadata/v1/", HOST_BLOCKED),
    Case("metadata-name-upper", "http://METADATA.GOOGLE.INTERNAL/computeMetadata/v1/", HOST_BLOCKED),
    Case("bad-punycode", "http://xn--localhost-:{c}/a.wav", INVALID),
    # userinfo, backslashes, whitespace
    Case("userinfo", "http://user@127.0.0.1:{c}/a.wav", USERINFO),
    Case("userinfo-host", "http://public.test@127.0.0.1:{c}/a.wav", USERINFO),
    Case("userinfo-port", "http://public.test:80@127.0.0.1:{c}/a.wav", USERINFO),
    Case("userinfo-encoded", "http://127.0.0.1:{c}%2f@public.test/a.wav", USERINFO),
    Case("backslash-at", "http://127.0.0.1:{c}\\@public.test/a.wav", INVALID),
    Case("backslash-host", "http://public.test\\@127.0.0.1:{c}/a.wav", INVALID),
    Case("backslash-slashes", "http:\\\\127.0.0.1:{c}/a.wav", INVALID),
    Case("one-slash", "http:/127.0.0.1:{c}/a.wav", INVALID),
    Case("crlf", "http://127.0.0.1:{c}/a.wav\r\nHost: public.test", INVALID),
    Case("tab", "http://127.0.0.1\t:{c}/a.wav", INVALID),
    Case("bad-port", "http://127.0.0.1:+{c}/a.wav", INVALID),
    Case(
        "too-long",
        "http://127.0.0.1:{c}/" + "a" * 2100,
        INVALID,
        source_code="validation_error",
        webhook_code="string_too_long",
    ),
    # IPv6 forms
    Case("v6-loopback", "http://[::1]:{c}/a.wav", BLOCKED),
    Case("v6-loopback-long", "http://[0:0:0:0:0:0:0:1]:{c}/a.wav", BLOCKED),
    Case("v6-unspecified", "http://[::]:{c}/a.wav", BLOCKED),
    Case("v4-mapped", "http://[::ffff:127.0.0.1]:{c}/a.wav", BLOCKED),
    Case("v4-mapped-hex", "http://[::ffff:7f00:1]:{c}/a.wav", BLOCKED),
    Case("v4-compatible", "http://[::127.0.0.1]:{c}/a.wav", BLOCKED),
    Case("v4-translated", "http://[::ffff:0:127.0.0.1]:{c}/a.wav", BLOCKED),
    Case("nat64", "http://[64:ff9b::127.0.0.1]:{c}/a.wav", BLOCKED),
    Case("nat64-local", "http://[64:ff9b:1::7f00:1]:{c}/a.wav", BLOCKED),
    Case("6to4", "http://[2002:7f00:1::1]:{c}/a.wav", BLOCKED),
    Case("teredo", f"http://[{TEREDO_LOOPBACK}]:{{c}}/a.wav", BLOCKED),
    Case("teredo-allowed-server", f"http://[{TEREDO_ALLOWED_SERVER}]:{{c}}/a.wav", BLOCKED),
    Case("v6-metadata", "http://[fd00:ec2::254]/latest/meta-data/", BLOCKED),
    Case("v4-mapped-metadata", "http://[::ffff:a9fe:a9fe]/latest/meta-data/", BLOCKED),
    Case("zone-id", "http://[fe80::1%25eth0]:{c}/a.wav", INVALID),
    Case("zone-id-raw", "http://[fe80::1%eth0]:{c}/a.wav", INVALID),
    Case("loopback-zone", "http://[::1%251]:{c}/a.wav", INVALID),
    Case("v6-trailing-junk", "http://[::1]public.test:{c}/a.wav", INVALID),
    # names resolving (stub) to internal addresses
    Case("dns-loopback", "http://loop.test:{c}/a.wav", BLOCKED, dns=True),
    Case("dns-v6-loopback", "http://loop6.test:{c}/a.wav", BLOCKED, dns=True),
    Case("dns-metadata", "http://meta.test/latest/meta-data/", BLOCKED, dns=True),
    Case("dns-private", "http://ten.test:{c}/a.wav", BLOCKED, dns=True),
    Case("dns-link-local-zone", "http://zone.test:{c}/a.wav", BLOCKED, dns=True),
    Case("dns-nat64", "http://nat64.test:{c}/a.wav", BLOCKED, dns=True),
    Case("dns-6to4", "http://sixtofour.test:{c}/a.wav", BLOCKED, dns=True),
    Case("dns-teredo", "http://teredo.test:{c}/a.wav", BLOCKED, dns=True),
    Case("dns-mapped", "http://mapped.test:{c}/a.wav", BLOCKED, dns=True),
    Case("dns-unspecified", "http://zero.test:{c}/a.wav", BLOCKED, dns=True),
    Case("dns-one-bad-of-two", "http://mixed.test:{c}/a.wav", BLOCKED, dns=True),
    Case("dns-allowed-and-not", "http://allowed-and-not.test:{c}/a.wav", BLOCKED, dns=True),
    Case("dns-cgnat", "http://cgnat.test:{c}/a.wav", BLOCKED, dns=True),
    Case("dns-ula", "http://ula.test:{c}/a.wav", BLOCKED, dns=True),
    # schemes
    Case("file", "file:///etc/passwd", SCHEME),
    Case("file-host", "file://127.0.0.1/etc/passwd", SCHEME),
    Case("gopher", "gopher://127.0.0.1:{c}/_GET%20/%20HTTP/1.0", SCHEME),
    Case("ftp", "ftp://127.0.0.1:{c}/a.wav", SCHEME),
    Case("data", "data:audio/wav;base64,UklGRiQAAABXQVZF", SCHEME),
    Case("dict", "dict://127.0.0.1:{c}/info", SCHEME),
    Case("ws", "ws://127.0.0.1:{c}/a.wav", SCHEME),
    Case("jar", "jar:http://127.0.0.1:{c}/a.jar!/", SCHEME),
    Case("scheme-relative", "//127.0.0.1:{c}/a.wav", SCHEME),
]
SYNTAX_CASES = [case for case in CASES if not case.dns]


@dataclass(frozen=True)
class Hop:
    id: str
    location: str  # where the allow-listed bouncer redirects to; `{c}` the canary's, `{b}` its own port
    status: int = 302


REDIRECTS = [
    Hop("dotted", "http://127.0.0.1:{c}/a.wav"),
    Hop("decimal-301", "http://2130706433:{c}/a.wav", 301),
    Hop("hex-short-303", "http://0x7f.1:{c}/a.wav", 303),
    Hop("v6-loopback-307", "http://[::1]:{c}/a.wav", 307),
    Hop("v4-mapped-308", "http://[::ffff:127.0.0.1]:{c}/a.wav", 308),
    Hop("dns-loopback", "http://loop.test:{c}/a.wav"),
    Hop("localhost", "http://localhost:{c}/a.wav"),
    Hop("scheme-relative", "//127.0.0.1:{c}/a.wav"),
    Hop("metadata", "http://169.254.169.254/latest/meta-data/"),
    Hop("file", "file:///etc/passwd"),
    Hop("gopher", "gopher://127.0.0.1:{c}/_INFO"),
    Hop("userinfo", "http://bouncer.test:{b}@127.0.0.1:{c}/a.wav"),
    Hop("teredo-allowed-server", f"http://[{TEREDO_ALLOWED_SERVER}]:{{c}}/a.wav"),
    # two hops: allowed -> allowed (by name) -> the canary
    Hop(
        "second-hop", "http://bouncer.test:{b}/redirect?to=http%3A%2F%2F127.0.0.1%3A{c}%2Fa.wav%26code%3D307"
    ),
]


def _location(hop: Hop, canary: Canary, bouncer: Bouncer) -> str:
    return hop.location.replace("{c}", str(canary.port)).replace("{b}", str(bouncer.port))


def _quote(url: str) -> str:
    return quote(url, safe="")


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def egress() -> Iterator[list[str]]:
    with egress_guard() as refused:
        yield refused


@pytest.fixture(scope="module")
def resolver() -> SwitchableResolver:
    return SwitchableResolver(phases={"default": dict(NAMES)})


@pytest.fixture(scope="module")
async def ingest(
    make_api: AppFactory, resolver: SwitchableResolver, egress: list[str], bouncer: Bouncer
) -> AsyncIterator[Api]:
    """The real app; the operator allow-lists the bouncer's address (127.0.0.3/32) only."""
    async with make_api(resolver=resolver, ssrf_allow_networks=BOUNCER_ALLOW, url_max_redirects=3) as api:
        yield api


@pytest.fixture(scope="module")
async def sec_key(make_key: KeyFactory) -> Key:
    return await make_key(rate_limit=0, name="security")


async def submit(api: Api, key: Key, url: str, **options: Any) -> Any:
    return await api.client.post("/api/v1/transcribe/url", headers=key.headers, json={"url": url, **options})


async def settled(api: Api, key: Key, job_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        job: dict[str, Any] = (await api.client.get(f"/api/v1/jobs/{job_id}", headers=key.headers)).json()
        return job if job["status"] != "PENDING" else None

    result: dict[str, Any] = await wait_until(done, timeout=20, what=f"download of {job_id}", interval=0.05)
    return result


# -- URL ingest: refused at submission -----------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_ingest_refuses_the_source_url(ingest: Api, sec_key: Key, canary: Canary, case: Case) -> None:
    before = canary.hits
    response = await submit(ingest, sec_key, case.format(canary))
    assert response.status_code == 422, response.text
    body = problem(response)
    assert body["code"] == (case.source_code or case.code), body
    assert body["detail"]
    assert canary.hits == before


@pytest.mark.parametrize("case", SYNTAX_CASES, ids=[case.id for case in SYNTAX_CASES])
async def test_ingest_refuses_the_webhook_url_at_submission(
    ingest: Api, sec_key: Key, canary: Canary, case: Case
) -> None:
    """A webhook URL is checked without DNS at submission (the notifier resolves at delivery): every
    case that needs no DNS is already refused here, as a field error carrying the stable code."""
    response = await submit(ingest, sec_key, "http://public.test/a.wav", webhook_url=case.format(canary))
    assert response.status_code == 422, response.text
    body = problem(response)
    assert body["code"] == "validation_error"
    [error] = [error for error in body["errors"] if error["loc"] == ["body", "webhook_url"]]
    assert error["type"] == (case.webhook_code or case.code), error


# -- URL ingest: redirects from the allow-listed source ------------------------------------------


@pytest.mark.parametrize("hop", REDIRECTS, ids=[hop.id for hop in REDIRECTS])
async def test_ingest_refuses_a_redirect_to_the_canary(
    ingest: Api, sec_key: Key, canary: Canary, bouncer: Bouncer, hop: Hop
) -> None:
    before = canary.hits
    to = _location(hop, canary, bouncer)
    source = bouncer.url(f"/redirect?to={_quote(to)}&code={hop.status}", host="bouncer.test")
    response = await submit(ingest, sec_key, source)
    assert response.status_code == 202, response.text  # the source itself is allow-listed
    job = await settled(ingest, sec_key, response.json()["job_id"])
    assert job["status"] == "FAILED", job
    assert "redirect was refused" in job["error"]["message"], job["error"]
    assert canary.hits == before


async def test_parser_differentials_go_to_the_checked_host_only(
    ingest: Api, sec_key: Key, canary: Canary, egress: list[str]
) -> None:
    """`#@` and `?@` make some parsers see 127.0.0.1 as the host; ours sees `public.test` and the
    download goes there (refused by the egress guard), never to the canary."""
    before, refused = canary.hits, len(egress)
    for url in (
        "http://public.test#@127.0.0.1:{c}/a.wav",
        "http://public.test?@127.0.0.1:{c}/a.wav",
        "http://public.test/a.wav#@127.0.0.1:{c}",
    ):
        response = await submit(ingest, sec_key, url.replace("{c}", str(canary.port)))
        assert response.status_code == 202, response.text
        job = await settled(ingest, sec_key, response.json()["job_id"])
        assert (job["status"], job["error"]["message"]) == ("FAILED", "Could not connect to the source.")
    assert {httpx.URL(url).host for url in egress[refused:]} == {PUBLIC_ADDRESS}
    assert canary.hits == before


# -- webhook delivery: refused at send time ------------------------------------------------------

DELIVERY_CASES = CASES
DELIVERY_REDIRECTS = [hop for hop in REDIRECTS if hop.id != "second-hop"]


def finished(job_id: uuid.UUID) -> Envelope:
    return Envelope.for_topic(Topic.JOBS_FINISHED, job_id, producer="security-test")


@dataclass
class Delivered:
    delivery: WebhookDelivery
    attempts: list[WebhookAttempt]


async def _outcomes(
    sessions: async_sessionmaker[AsyncSession], jobs: dict[str, uuid.UUID]
) -> dict[str, Delivered] | None:
    async with sessions() as session:
        rows = list(
            await session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id.in_(jobs.values())))
        )
        if len(rows) < len(jobs) or any(row.status == DeliveryStatus.PENDING for row in rows):
            return None
        by_job = {row.job_id: row for row in rows}
        found: dict[str, Delivered] = {}
        for name, job_id in jobs.items():
            delivery = by_job[job_id]
            attempts = list(
                await session.scalars(
                    select(WebhookAttempt)
                    .where(WebhookAttempt.delivery_id == delivery.id)
                    .order_by(WebhookAttempt.id)
                )
            )
            found[name] = Delivered(delivery, attempts)
        return found


async def run_notifier(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    resolver: SwitchableResolver,
    jobs: dict[str, uuid.UUID],
    *,
    timeout: float = 30,
    **overrides: Any,
) -> dict[str, Delivered]:
    """The notifier as `main.serve` wires it (minus Kafka): record each job's finished event, run
    the delivery loop until every delivery has settled."""
    config = notifier_settings(
        settings,
        webhook_allow_networks=[ipaddress.ip_network(f"{BOUNCER_HOST}/32")],
        webhook_follow_redirects=True,
        webhook_concurrency=16,
        **overrides,
    )
    loop = make_loop(config, sessions, resolver=resolver)
    handler = NotifierHandler(config, sessions, on_created=loop.wake)
    for job_id in jobs.values():
        await handler(finished(job_id))
    task = asyncio.create_task(loop.run())
    try:
        outcomes: dict[str, Delivered] = await wait_until(
            lambda: _outcomes(sessions, jobs), timeout=timeout, what="deliveries settle", interval=0.2
        )
    finally:
        loop.stop()
        await asyncio.wait_for(task, 30)
    return outcomes


@pytest.fixture(scope="module")
async def delivered(
    settings: Settings,
    sessionmaker_: async_sessionmaker[AsyncSession],
    owner: Owner,
    resolver: SwitchableResolver,
    canary: Canary,
    bouncer: Bouncer,
    egress: list[str],
) -> AsyncIterator[dict[str, Delivered]]:
    """Every case stored as a finished job's webhook URL (as if accepted before a rule changed, or
    resolved differently since), delivered in one run of the notifier."""
    jobs = JobFactory(sessionmaker_)
    wanted: dict[str, uuid.UUID] = {}
    for case in DELIVERY_CASES:
        wanted[case.id] = await jobs.make(
            JobStatus.FAILED,
            owner=owner,
            webhook_url=case.format(canary),
            error_code="unknown",
            error_message="The download failed.",
        )
    for hop in DELIVERY_REDIRECTS:
        location = _location(hop, canary, bouncer)
        wanted[f"redirect-{hop.id}"] = await jobs.make(
            JobStatus.FAILED,
            owner=owner,
            webhook_url=bouncer.url(f"/redirect?to={_quote(location)}&code=307", host="bouncer.test"),
            error_code="unknown",
            error_message="The download failed.",
        )
    before = canary.hits
    try:
        yield await run_notifier(settings, sessionmaker_, resolver, wanted)
        assert canary.hits == before
    finally:
        await jobs.cleanup()


@pytest.mark.parametrize("case", DELIVERY_CASES, ids=[case.id for case in DELIVERY_CASES])
def test_notifier_refuses_the_webhook_at_delivery(delivered: dict[str, Delivered], case: Case) -> None:
    outcome = delivered[case.id]
    assert outcome.delivery.status == DeliveryStatus.FAILED  # refused for good: no retry
    [attempt] = outcome.attempts
    assert attempt.status_code is None
    assert attempt.error is not None
    assert attempt.error.startswith(f"{case.code}: "), attempt.error


@pytest.mark.parametrize("hop", DELIVERY_REDIRECTS, ids=[hop.id for hop in DELIVERY_REDIRECTS])
def test_notifier_refuses_a_redirect_to_the_canary(delivered: dict[str, Delivered], hop: Hop) -> None:
    outcome = delivered[f"redirect-{hop.id}"]
    assert outcome.delivery.status == DeliveryStatus.FAILED
    [attempt] = outcome.attempts
    assert attempt.status_code is None
    assert (attempt.error or "").startswith("redirect refused: url_"), attempt.error


# -- DNS rebinding: public at submission, internal at delivery -----------------------------------

REBOUND = {
    "loopback": ("127.0.0.1", "loopback"),
    "metadata": ("169.254.169.254", "cloud metadata"),
    "private": ("10.1.2.3", "private"),
    "v4-mapped-loopback": ("::ffff:127.0.0.1", "loopback (embedded IPv4)"),
    "v6-loopback": ("::1", "loopback"),
}


async def test_a_webhook_name_rebound_to_internal_addresses_is_refused_at_delivery(
    make_api: AppFactory,
    ingest: Api,
    sec_key: Key,
    settings: Settings,
    sessionmaker_: async_sessionmaker[AsyncSession],
    canary: Canary,
    bouncer: Bouncer,
    egress: list[str],
) -> None:
    """Jobs submitted through ingest with webhook URLs whose names answer with a public address at
    submission; the URL download fails (404 from the allow-listed source), the job finishes FAILED,
    and at delivery the names answer with internal addresses: every delivery is refused, recorded
    with the reason, visible through `GET /jobs/{id}/webhooks`, and the canary hears nothing."""
    resolver = SwitchableResolver(
        phases={
            "default": {"bouncer.test": [BOUNCER_HOST]},
            "submit": {f"{name}.rebind.test": [PUBLIC_ADDRESS] for name in REBOUND},
            "deliver": {f"{name}.rebind.test": [address] for name, (address, _) in REBOUND.items()},
        },
        phase="submit",
    )
    before = canary.hits
    jobs: dict[str, uuid.UUID] = {}
    async with make_api(resolver=resolver, ssrf_allow_networks=BOUNCER_ALLOW) as api:
        for name in REBOUND:
            webhook = f"http://{name}.rebind.test:{canary.port}/hook"
            response = await submit(
                api, sec_key, bouncer.url("/missing.wav", host="bouncer.test"), webhook_url=webhook
            )
            assert response.status_code == 202, response.text
            job = await settled(api, sec_key, response.json()["job_id"])
            assert (job["status"], job["webhook_url"]) == ("FAILED", webhook)
            jobs[name] = uuid.UUID(job["id"])
        # Submission never needed the webhook's address (it is checked where it is used).
        assert not [host for phase, host in resolver.calls if host.endswith(".rebind.test")]
    resolver.phase = "deliver"
    outcomes = await run_notifier(settings, sessionmaker_, resolver, jobs)
    for name, (address, reason) in REBOUND.items():
        outcome = outcomes[name]
        assert outcome.delivery.status == DeliveryStatus.FAILED, name
        [attempt] = outcome.attempts
        assert attempt.error == f"url_address_blocked: The URL's host resolves to a {reason} address.", name
        assert ("deliver", f"{name}.rebind.test") in resolver.calls
        listing = await ingest.client.get(f"/api/v1/jobs/{jobs[name]}/webhooks", headers=sec_key.headers)
        assert listing.status_code == 200, listing.text
        [item] = listing.json()["items"]
        assert item["status"] == "FAILED"
        assert item["attempts"][0]["status_code"] is None
        assert "url_address_blocked" in item["attempts"][0]["error"], address
    assert canary.hits == before


async def test_each_attempt_resolves_again_and_connects_to_what_it_checked(
    settings: Settings,
    sessionmaker_: async_sessionmaker[AsyncSession],
    owner: Owner,
    canary: Canary,
    egress: list[str],
) -> None:
    """Public on the first attempt (the connection goes to that address, which the egress guard
    refuses: a failed attempt, retried), loopback on the second: refused for good. The name is
    asked once per attempt, and no connection ever went anywhere but the checked public address."""
    resolver = SwitchableResolver(
        phases={}, sequences={"flip.rebind.test": [[PUBLIC_ADDRESS], ["127.0.0.1"]]}
    )
    jobs = JobFactory(sessionmaker_)
    before, refused = canary.hits, len(egress)
    try:
        job_id = await jobs.make(
            JobStatus.FAILED,
            owner=owner,
            webhook_url=f"http://flip.rebind.test:{canary.port}/hook",
            error_code="unknown",
            error_message="x",
        )
        outcomes = await run_notifier(
            settings, sessionmaker_, resolver, {"flip": job_id}, webhook_retry_schedule_seconds=[0.1, 0.1]
        )
    finally:
        await jobs.cleanup()
    outcome = outcomes["flip"]
    assert outcome.delivery.status == DeliveryStatus.FAILED
    first, second = outcome.attempts
    assert (first.error or "").startswith("connect failed"), first.error
    assert (second.error or "").startswith("url_address_blocked"), second.error
    assert [host for _, host in resolver.calls] == ["flip.rebind.test", "flip.rebind.test"]
    assert {(httpx.URL(url).host, httpx.URL(url).port) for url in egress[refused:]} == {
        (PUBLIC_ADDRESS, canary.port)
    }
    assert canary.hits == before


# -- the allow-list vouches only for what it covers ----------------------------------------------


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        (BOUNCER_HOST, True),
        (f"::ffff:{BOUNCER_HOST}", True),  # another spelling of the allowed address
        ("64:ff9b::7f00:3", True),  # NAT64 of the allowed address only
        ("2002:7f00:3::1", True),  # 6to4 of the allowed address only
        (TEREDO_ALLOWED_SERVER, False),  # also carries 127.0.0.1 (its client)
        (_teredo("127.0.0.1", BOUNCER_HOST), False),  # also carries 127.0.0.1 (its server)
        (_teredo(BOUNCER_HOST, "169.254.169.254"), False),  # metadata, whatever the allow-list says
        ("127.0.0.1", False),
    ],
)
def test_the_allow_list_vouches_only_for_the_addresses_it_covers(address: str, allowed: bool) -> None:
    reason = block_reason(ipaddress.ip_address(address), [ipaddress.ip_network(f"{BOUNCER_HOST}/32")])
    assert (reason is None) == allowed, reason


# -- the end: the canary heard nothing, nothing internal was even attempted -----------------------


def test_the_canary_was_never_reached(canary: Canary, egress: list[str]) -> None:
    assert canary.connections == []
    # The guard saw only the public address the differential and flip tests aim at on purpose.
    assert {httpx.URL(url).host for url in egress} <= {PUBLIC_ADDRESS}, egress
