"""`POST /api/v1/transcribe/url`: SSRF checks at submission and at every redirect hop, the download
pinned to the checked address, limits, and the job's fate.

Live requests go to loopback only: the media server on 127.0.0.1 (allow-listed where a test needs a
download to succeed), and a decoy on 127.0.0.2 that a correct implementation never reaches. Private,
link-local, metadata and CGNAT addresses are only submitted as URLs that must be refused before any
connection (and are classified exhaustively in tests/unit/ingest/test_ssrf.py).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from stt_common.messages import Topic
from stt_common.s3 import ObjectStore, original_key
from stt_common.settings import Settings
from tests.helpers import wait_until
from tests.integration.ingest.conftest import (
    Api,
    AppFactory,
    Key,
    LocalServer,
    StubResolver,
    messages_for,
    serve_local,
)
from tests.integration.ingest.media import wav_bytes

pytestmark = pytest.mark.timeout(120)

ALLOW = '["127.0.0.1/32"]'


@pytest.fixture(scope="module")
def resolver(media_server: LocalServer) -> StubResolver:
    return StubResolver(
        names={
            "media.test": ["127.0.0.1"],
            "decoy.test": ["127.0.0.2"],
            "private.test": ["10.0.0.8"],
            "mixed.test": ["127.0.0.1", "192.168.7.7"],
            "metadata-alias.test": ["169.254.169.254"],
            "cgnat.test": ["100.64.1.1"],
            "mapped.test": ["::ffff:127.0.0.2"],
            "ula.test": ["fd00:ec2::254"],
        }
    )


@pytest.fixture(scope="module")
async def allowed(make_api: AppFactory, resolver: StubResolver) -> AsyncIterator[Api]:
    """An app whose operator allow-lists 127.0.0.1/32 (the media server) and nothing else."""
    async with make_api(resolver=resolver, ssrf_allow_networks=ALLOW, url_max_redirects=3) as started:
        yield started


@pytest.fixture(scope="module")
async def strict(make_api: AppFactory, resolver: StubResolver) -> AsyncIterator[Api]:
    """An app with the default (empty) allow-list: every internal address is refused."""
    async with make_api(resolver=resolver) as started:
        yield started


async def submit(api: Api, key: Key, url: str, **options: Any) -> Any:
    return await api.client.post("/api/v1/transcribe/url", headers=key.headers, json={"url": url, **options})


async def settled(api: Api, key: Key, job_id: str) -> dict[str, Any]:
    """The job once its download has finished (UPLOADED or FAILED)."""

    async def done() -> dict[str, Any] | None:
        job: dict[str, Any] = (await api.client.get(f"/api/v1/jobs/{job_id}", headers=key.headers)).json()
        return job if job["status"] != "PENDING" else None

    result: dict[str, Any] = await wait_until(done, timeout=20, what=f"download of {job_id}", interval=0.1)
    return result


# -- refused at submission ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://127.0.0.1:{port}/tone.wav", "url_address_blocked"),
        ("http://[::1]:{port}/tone.wav", "url_address_blocked"),
        ("http://[::ffff:127.0.0.1]:{port}/tone.wav", "url_address_blocked"),
        ("http://2130706433:{port}/tone.wav", "url_address_blocked"),
        ("http://0177.0.0.1:{port}/tone.wav", "url_address_blocked"),
        ("http://0x7f.1:{port}/tone.wav", "url_address_blocked"),
        ("http://127.1:{port}/tone.wav", "url_address_blocked"),
        ("http://localhost:{port}/tone.wav", "url_host_blocked"),
        ("http://169.254.169.254/latest/meta-data/iam/", "url_address_blocked"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "url_address_blocked"),
        ("http://metadata.google.internal/computeMetadata/v1/", "url_host_blocked"),
        ("http://10.1.2.3/a.wav", "url_address_blocked"),
        ("http://100.64.0.10/a.wav", "url_address_blocked"),
        ("http://private.test/a.wav", "url_address_blocked"),
        ("http://mixed.test/a.wav", "url_address_blocked"),
        ("http://metadata-alias.test/a.wav", "url_address_blocked"),
        ("http://cgnat.test/a.wav", "url_address_blocked"),
        ("http://mapped.test/a.wav", "url_address_blocked"),
        ("http://ula.test/a.wav", "url_address_blocked"),
        ("http://unknown.test/a.wav", "url_unresolvable"),
        ("file:///etc/passwd", "url_scheme_not_allowed"),
        ("gopher://127.0.0.1:6379/_FLUSHALL", "url_scheme_not_allowed"),
        ("ftp://media.test/a.wav", "url_scheme_not_allowed"),
        ("http://user:secret@media.test/a.wav", "url_credentials_not_allowed"),
        ("http://media.test@127.0.0.1/a.wav", "url_credentials_not_allowed"),
        ("not a url", "url_invalid"),
    ],
)
async def test_unsafe_urls_are_refused_at_submission(
    strict: Api, media_server: LocalServer, key: Key, url: str, code: str
) -> None:
    hits = len(media_server.hits)
    response = await submit(strict, key, url.format(port=media_server.port))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code
    assert len(media_server.hits) == hits  # nothing was fetched


async def test_the_allow_list_admits_only_what_it_lists(allowed: Api, key: Key) -> None:
    for url in (
        "http://127.0.0.2:9/a.wav",
        "http://[::1]:9/a.wav",
        "http://decoy.test/a.wav",
        "http://10.0.0.1/a.wav",
    ):
        response = await submit(allowed, key, url)
        assert response.status_code == 422, url


# -- downloads ----------------------------------------------------------------------------------


async def test_a_url_is_downloaded_stored_and_queued(
    allowed: Api,
    key: Key,
    media_server: LocalServer,
    store: ObjectStore,
    settings: Settings,
    resolver: StubResolver,
) -> None:
    calls = len(resolver.calls)
    url = f"http://media.test:{media_server.port}/tone.wav"
    response = await submit(allowed, key, url, language="hy", model="base")  # base: multilingual
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "PENDING"
    job = await settled(allowed, key, body["job_id"])
    assert job["status"] == "UPLOADED", job
    job_id = uuid.UUID(body["job_id"])
    assert await store.get_bytes(original_key(job_id)) == wav_bytes(1.0)
    assert (job["source_url"], job["original_filename"], job["content_type"], job["language"]) == (
        f"http://media.test:{media_server.port}/tone.wav",
        "tone.wav",
        "audio/wav",
        "hy",
    )
    # One resolution at submission, one for the download's only hop, and the connection went to
    # the checked address with the original Host header.
    assert resolver.calls[calls:] == ["media.test", "media.test"]
    assert media_server.hits[-1] == ("/tone.wav", f"media.test:{media_server.port}")
    (trigger,) = await messages_for(settings, Topic.JOBS_SUBMITTED, job_id)
    assert trigger.job_id == job_id


async def test_content_disposition_names_the_file(allowed: Api, key: Key, media_server: LocalServer) -> None:
    response = await submit(allowed, key, media_server.url("/download"))
    job = await settled(allowed, key, response.json()["job_id"])
    assert (job["status"], job["original_filename"]) == ("UPLOADED", "réunion notes.wav")


async def test_a_redirect_within_the_allowed_address_is_followed(
    allowed: Api, key: Key, media_server: LocalServer
) -> None:
    target = media_server.url("/tone.wav", host="media.test")
    response = await submit(allowed, key, media_server.url(f"/redirect?to={target}&code=307"))
    job = await settled(allowed, key, response.json()["job_id"])
    assert job["status"] == "UPLOADED", job


@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.2:{decoy}/tone.wav",
        "http://decoy.test:{decoy}/tone.wav",
        "http://localhost:{decoy}/tone.wav",
        "http://2130706434:{decoy}/tone.wav",  # 127.0.0.2 in decimal
        "http://0x7f.0.0.2:{decoy}/tone.wav",
        "http://[::ffff:127.0.0.2]:{decoy}/tone.wav",
        "http://[::1]:{decoy}/tone.wav",
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_INFO",
        "http://user:pw@media.test:{port}/tone.wav",
    ],
)
async def test_a_redirect_to_an_internal_address_fails_the_job(
    allowed: Api,
    key: Key,
    media_server: LocalServer,
    other_loopback_server: LocalServer,
    settings: Settings,
    location: str,
) -> None:
    to = location.format(decoy=other_loopback_server.port, port=media_server.port)
    decoy_hits = len(other_loopback_server.hits)
    response = await submit(allowed, key, media_server.url("/redirect?to=" + to.replace("&", "%26")))
    assert response.status_code == 202, response.text
    job = await settled(allowed, key, response.json()["job_id"])
    assert job["status"] == "FAILED"
    assert job["error"]["code"] == "unknown"
    assert "redirect was refused" in job["error"]["message"]
    assert len(other_loopback_server.hits) == decoy_hits  # never reached
    # The webhook path hears about it: the failure is a finished job.
    await messages_for(settings, Topic.JOBS_FINISHED, uuid.UUID(job["id"]))


@pytest.mark.parametrize(
    ("path", "code", "message"),
    [
        ("/loop", "unknown", "More than 3 redirects"),
        ("/text.mp3", "invalid_audio", "not a recognised audio or video format"),
        ("/missing.wav", "unknown", "HTTP 404"),
        (
            "/big.wav?size=300000",
            "unknown",
            "larger than 200000 bytes",
        ),  # chunked: the running count stops it
    ],
)
async def test_bad_downloads_fail_the_job(
    make_api: AppFactory,
    resolver: StubResolver,
    key: Key,
    media_server: LocalServer,
    store: ObjectStore,
    path: str,
    code: str,
    message: str,
) -> None:
    async with make_api(
        resolver=resolver, ssrf_allow_networks=ALLOW, url_max_redirects=3, url_fetch_max_bytes=200_000
    ) as api:
        response = await submit(api, key, media_server.url(path))
        job = await settled(api, key, response.json()["job_id"])
    assert job["status"] == "FAILED", job
    assert job["error"]["code"] == code
    assert message in job["error"]["message"]
    assert not await store.exists(original_key(uuid.UUID(job["id"])))
    # Nothing was stored: the source may serve something else next time, so a retry is offered.
    assert job["links"]["retry"] is not None
    assert job["error"]["retryable"] is True
    if code == "invalid_audio":
        assert "fix what it serves" in job["error"]["next_step"]


async def test_a_stalled_source_times_out(
    make_api: AppFactory, resolver: StubResolver, key: Key, media_server: LocalServer
) -> None:
    async with make_api(resolver=resolver, ssrf_allow_networks=ALLOW, url_read_timeout_seconds=0.5) as api:
        response = await submit(api, key, media_server.url("/slow.wav"))
        job = await settled(api, key, response.json()["job_id"])
    assert (job["status"], job["error"]["code"]) == ("FAILED", "timeout")


async def test_cancelling_a_download_in_flight(
    make_api: AppFactory, resolver: StubResolver, key: Key, media_server: LocalServer
) -> None:
    async with make_api(resolver=resolver, ssrf_allow_networks=ALLOW) as api:
        response = await submit(api, key, media_server.url("/slow.wav"))
        job_id = response.json()["job_id"]
        await wait_until(lambda: api.state.ingestor.running == 1, timeout=5, what="download started")
        cancelled = await api.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=key.headers)
        assert cancelled.status_code == 200
        assert await api.state.ingestor.wait_idle(5)
        job = (await api.client.get(f"/api/v1/jobs/{job_id}", headers=key.headers)).json()
    assert (job["status"], job["error"]["code"]) == ("CANCELLED", "cancelled")


async def test_a_failed_download_is_retried_by_downloading_again(
    allowed: Api, key: Key, media_server: LocalServer
) -> None:
    response = await submit(allowed, key, media_server.url("/missing.wav"))
    job_id = response.json()["job_id"]
    assert (await settled(allowed, key, job_id))["status"] == "FAILED"
    retried = await allowed.client.post(f"/api/v1/jobs/{job_id}/retry", headers=key.headers)
    assert retried.status_code == 202, retried.text
    assert retried.json()["status"] == "PENDING"
    assert (await settled(allowed, key, job_id))["status"] == "FAILED"  # still 404, but it did try again
    paths = [path for path, _ in media_server.hits if path == "/missing.wav"]
    assert len(paths) >= 2


async def test_idempotent_url_submission(allowed: Api, key: Key, media_server: LocalServer) -> None:
    headers = {**key.headers, "Idempotency-Key": f"url-{uuid.uuid4()}"}
    payload = {"url": media_server.url("/tone.wav"), "language": "en"}
    first = await allowed.client.post("/api/v1/transcribe/url", headers=headers, json=payload)
    again = await allowed.client.post("/api/v1/transcribe/url", headers=headers, json=payload)
    assert first.status_code == again.status_code == 202
    assert first.json()["job_id"] == again.json()["job_id"]
    different = await allowed.client.post(
        "/api/v1/transcribe/url", headers=headers, json={**payload, "language": "fr"}
    )
    assert (different.status_code, different.json()["code"]) == (422, "idempotency_key_reused")
    await settled(allowed, key, first.json()["job_id"])


async def test_url_body_validation(allowed: Api, key: Key) -> None:
    response = await allowed.client.post(
        "/api/v1/transcribe/url", headers=key.headers, json={"url": "http://media.test/a", "extra": 1}
    )
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "validation_error"
    assert ["body", "extra"] in [error["loc"] for error in problem["errors"]]
    broken = await allowed.client.post(
        "/api/v1/transcribe/url",
        headers={**key.headers, "Content-Type": "application/json"},
        content=b"{not json",
    )
    assert (broken.status_code, broken.json()["code"]) == (422, "validation_error")


# -- https: connect to the checked address, verify the certificate for the name -----------------


def _certificate(tmp: Path) -> tuple[tuple[str, str], ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "media.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("media.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp / "cert.pem").write_bytes(cert_pem)
    (tmp / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(cadata=cert_pem.decode())
    return (str(tmp / "cert.pem"), str(tmp / "key.pem")), context


async def test_https_download_connects_to_the_checked_address_with_the_name_as_sni(
    make_api: AppFactory, key: Key, tmp_path: Path
) -> None:
    files, trust = _certificate(tmp_path)
    resolver = StubResolver(names={"media.test": ["127.0.0.1"], "wrong-name.test": ["127.0.0.1"]})
    async with (
        serve_local("127.0.0.1", ssl_files=files) as tls,
        make_api(resolver=resolver, ssl_context=trust, ssrf_allow_networks=ALLOW) as api,
    ):
        ok = await submit(api, key, f"https://media.test:{tls.port}/tone.wav")
        job = await settled(api, key, ok.json()["job_id"])
        assert job["status"] == "UPLOADED", job
        assert tls.hits[-1] == ("/tone.wav", f"media.test:{tls.port}")

        # The same server under a name its certificate does not carry: verification must fail,
        # which proves the certificate is checked against the URL's name, not the IP we dialled.
        wrong = await submit(api, key, f"https://wrong-name.test:{tls.port}/tone.wav")
        job = await settled(api, key, wrong.json()["job_id"])
        assert job["status"] == "FAILED"
        ip_literal = await submit(api, key, f"https://127.0.0.1:{tls.port}/tone.wav")
        job = await settled(api, key, ip_literal.json()["job_id"])
        assert job["status"] == "FAILED"
    assert ipaddress.ip_address("127.0.0.1")  # loopback only, as everywhere here
