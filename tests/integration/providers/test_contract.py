"""The provider contract: every remote provider, against its fake vendor, turns the ways vendors fail
into the same typed errors (so the transcriber retries, falls back or fails a job the same way whoever
the vendor is), never shows its key, and is built from settings the same way.

What is specific to one vendor (its answer's shape, its options, its own error codes) is tested in that
vendor's file beside this one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from stt_common.errors import (
    AuthError,
    ErrorCode,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitedError,
    classify,
    is_transient,
)
from stt_common.providers.base import ProviderRequest
from stt_common.providers.catalogue import PROVIDERS
from stt_transcriber.pool import ADAPTERS, ProviderPool
from stt_transcriber.providers.remote import RemoteProvider
from stt_transcriber.settings import TranscriberSettings
from tests.fakes.loopback import LoopbackFake
from tests.fixtures.audio import sine_wav
from tests.helpers import free_port
from tests.integration.providers.cases import API_KEY, CASES, VendorCase


@pytest.fixture(scope="module", params=CASES, ids=str)
def case(request: pytest.FixtureRequest) -> VendorCase:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def fake(case: VendorCase) -> Iterator[LoopbackFake]:
    with case.fake(API_KEY) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_fake(fake: LoopbackFake) -> None:
    fake.reset()


@pytest.fixture
async def provider(case: VendorCase, fake: LoopbackFake) -> AsyncIterator[RemoteProvider[Any]]:
    p = case.provider(fake)
    yield p
    await p.aclose()


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sine_wav(tmp_path_factory.mktemp("contract") / "chunk.wav", 1.5)


def _no_key(*texts: object) -> None:
    for text in texts:
        assert API_KEY not in str(text)
        assert "0123456789-SECRET" not in str(text)


def test_every_catalogue_provider_has_an_adapter() -> None:
    assert set(ADAPTERS) == set(PROVIDERS)
    assert {case.name for case in CASES} == set(PROVIDERS) - {"local"}


async def test_transcribes(case: VendorCase, provider: RemoteProvider[Any], audio: Path) -> None:
    transcript = await provider.transcribe(audio, ProviderRequest())
    assert transcript.provider == case.name
    assert transcript.model == PROVIDERS[case.name].default_model
    assert transcript.text.strip()


async def test_silence_is_an_empty_transcript(
    case: VendorCase, fake: LoopbackFake, provider: RemoteProvider[Any], audio: Path
) -> None:
    fake.transcript_for = case.silence()
    transcript = await provider.transcribe(audio, ProviderRequest())
    assert transcript.segments == []


async def test_auth_error_is_permanent_and_says_which_setting(
    case: VendorCase, fake: LoopbackFake, provider: RemoteProvider[Any], audio: Path
) -> None:
    fake.fail(case.unauthorized())
    with pytest.raises(AuthError) as info:
        await provider.transcribe(audio, ProviderRequest())
    err = info.value
    assert not is_transient(err)
    assert classify(err) is ErrorCode.AUTH_ERROR
    assert err.message.startswith(case.name)
    assert f"STT_{case.name.upper()}_API_KEY" in err.message
    assert "\n" not in err.message
    _no_key(err, repr(err), err.message)


async def test_wrong_key_is_an_auth_error(case: VendorCase, fake: LoopbackFake, audio: Path) -> None:
    p = case.provider(fake, api_key="a-wrong-key-000000")
    try:
        with pytest.raises(AuthError):
            await p.transcribe(audio, ProviderRequest())
    finally:
        await p.aclose()


@pytest.mark.parametrize("retry_after", [7.0, None])
async def test_rate_limited_is_transient_with_retry_after(
    case: VendorCase,
    fake: LoopbackFake,
    provider: RemoteProvider[Any],
    audio: Path,
    retry_after: float | None,
) -> None:
    fake.fail(case.rate_limited(retry_after))
    with pytest.raises(RateLimitedError) as info:
        await provider.transcribe(audio, ProviderRequest())
    assert is_transient(info.value)
    assert classify(info.value) is ErrorCode.RATE_LIMITED
    assert info.value.retry_after == retry_after
    _no_key(info.value)
    # The scripted failure is used up: the next call succeeds.
    assert (await provider.transcribe(audio, ProviderRequest())).text


async def test_server_error_is_transient(
    case: VendorCase, fake: LoopbackFake, provider: RemoteProvider[Any], audio: Path
) -> None:
    fake.fail(case.server_error())
    with pytest.raises(ProviderUnavailableError) as info:
        await provider.transcribe(audio, ProviderRequest())
    assert is_transient(info.value)
    assert classify(info.value) is ErrorCode.PROVIDER_UNAVAILABLE
    assert "503" in info.value.message
    _no_key(info.value)


async def test_hang_is_a_timeout(case: VendorCase, fake: LoopbackFake, audio: Path) -> None:
    p = case.provider(fake, timeout=0.5)
    fake.fail(case.hang(30))
    try:
        with pytest.raises(ProviderTimeoutError) as info:
            await p.transcribe(audio, ProviderRequest())
    finally:
        await p.aclose()
    assert is_transient(info.value)
    assert classify(info.value) is ErrorCode.TIMEOUT
    _no_key(info.value)


async def test_refused_connection_is_unavailable(case: VendorCase, audio: Path) -> None:
    p = case.adapter(api_key=API_KEY, base_url=f"http://127.0.0.1:{free_port()}", timeout=2.0)
    try:
        with pytest.raises(ProviderUnavailableError) as info:
            await p.transcribe(audio, ProviderRequest())
    finally:
        await p.aclose()
    assert is_transient(info.value)
    _no_key(info.value)


async def test_garbage_200_is_transient_unavailable(
    case: VendorCase, fake: LoopbackFake, provider: RemoteProvider[Any], audio: Path
) -> None:
    fake.fail(case.garbage())
    with pytest.raises(ProviderUnavailableError) as info:
        await provider.transcribe(audio, ProviderRequest())
    assert "provider returned garbage" in info.value.message
    assert is_transient(info.value)
    _no_key(info.value)


async def test_no_key_is_an_auth_error_before_any_request(
    case: VendorCase, fake: LoopbackFake, audio: Path
) -> None:
    # An OpenAI-compatible server (a base URL) may need no key; OpenAI's own API does.
    base_url = None if case.name == "openai" else fake.base_url
    p = case.adapter(api_key=None, base_url=base_url)
    with pytest.raises(AuthError, match=f"STT_{case.name.upper()}_API_KEY"):
        await p.transcribe(audio, ProviderRequest())
    assert fake.requests() == []


async def test_built_from_settings_with_the_vendors_own_variable(
    case: VendorCase, fake: LoopbackFake, audio: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(case.vendor_env, API_KEY)
    monkeypatch.setenv(f"STT_{case.name.upper()}_BASE_URL", fake.base_url)
    settings = TranscriberSettings(development=True)
    assert settings.provider_configured(case.name)
    pool = ProviderPool(settings)
    try:
        p = pool.get(case.name)
        assert isinstance(p, case.adapter)
        assert (await p.transcribe(audio, ProviderRequest())).text
        _no_key(repr(p), repr(settings))
    finally:
        await pool.aclose()


async def test_the_key_never_reaches_messages_or_logs(
    case: VendorCase,
    fake: LoopbackFake,
    provider: RemoteProvider[Any],
    audio: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    failures = [case.unauthorized(), case.rate_limited(3.0), case.server_error(), case.garbage()]
    fake.fail(*failures)
    errors: list[BaseException] = []
    with capture_logs() as logs:
        for _ in failures:
            try:
                await provider.transcribe(audio, ProviderRequest())
            except Exception as exc:  # every kind: the point is what they say
                errors.append(exc)
        await provider.transcribe(audio, ProviderRequest())
    assert len(errors) == len(failures)
    captured = capfd.readouterr()
    _no_key(*errors, *(repr(e) for e in errors), logs, captured.out, captured.err, repr(provider))
