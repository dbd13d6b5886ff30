"""Ingest's settings: the shared connection settings, the providers' keys (ingest only checks which are
set: it never calls a provider) and the knobs of the REST API (env prefix `STT_`).

Built once in `main()` (or by a test) and handed to `create_app(settings)`; nothing else reads the
environment.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Annotated, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from stt_common.providers.catalogue import PROVIDERS
from stt_common.providers.local_models import DEFAULT_LOCAL_MODEL
from stt_common.settings import ProviderSettings

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _split_list(value: object) -> object:
    """Lists come from the environment as JSON (`["a","b"]`) or comma separated (`a,b`)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


class IngestSettings(ProviderSettings):
    """Everything `services/ingest` needs. Defaults are safe for production (loopback bind aside).

    The provider keys (from `ProviderSettings`) are only ever checked for presence: a job for a
    provider without one is refused at submission, and `GET /api/v1/providers` says which are set.
    """

    service_name: str = "ingest"

    http_host: str = Field(default="127.0.0.1", description="Address the REST API binds to.")
    http_port: int = Field(default=8000, ge=1, le=65535)
    public_base_url: str | None = Field(
        default=None,
        description="Base URL clients reach the API at (for links and Location); "
        "the request's own base URL when unset.",
    )
    http_graceful_shutdown_seconds: float = Field(default=25.0, gt=0)
    db_pool_size: int = Field(default=10, ge=1)

    # Uploads.
    max_upload_bytes: int = Field(default=500 * 1024 * 1024, ge=1, description="Largest accepted media file.")
    upload_idle_timeout_seconds: float = Field(
        default=60.0, gt=0, description="An upload that sends nothing for this long is cut off (408)."
    )
    upload_part_bytes: int = Field(
        default=5 * 1024 * 1024,
        ge=5 * 1024 * 1024,
        le=5 * 1024 * 1024 * 1024,
        description="S3 part size for streamed uploads. Each upload holds two parts in memory (one "
        "filling, one being sent); at most 10,000 parts, so max_upload_bytes / 10,000 at least.",
    )
    max_form_fields: int = Field(default=32, ge=1, description="Text fields accepted next to the file.")
    max_field_bytes: int = Field(default=16 * 1024, ge=64, description="Largest single text field.")
    max_json_body_bytes: int = Field(
        default=64 * 1024, ge=1024, description="Largest JSON request body (everything but the upload)."
    )

    # API keys.
    api_key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long a process reuses an API key's lookup (only keys found active are kept, "
        "4,096 at most). Revoking a key notifies every replica, which drops it at once; a replica that "
        "missed the notice refuses the key at the latest this long after. 0 = a lookup per request.",
    )

    # Rate limiting (per API key, shared by every replica through Redis).
    rate_limit_per_minute: int = Field(
        default=10, ge=0, description="Submissions per key per window, unless the key sets its own; 0 = off."
    )
    rate_limit_window_seconds: int = Field(default=60, ge=1)
    max_active_jobs_per_key: int = Field(
        default=100,
        ge=0,
        description="Unfinished jobs one key may have at once; more are refused (429) until some "
        "finish. Work is served first come, first served across keys, so this bounds how much of one "
        "key's backlog another key's jobs can wait behind; 0 = no limit.",
    )

    # Idempotency-Key.
    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=60)

    # URL ingest.
    url_fetch_max_bytes: int | None = Field(
        default=None, ge=1, description="Largest file fetched from a URL (max_upload_bytes when unset)."
    )
    url_connect_timeout_seconds: float = Field(default=10.0, gt=0)
    url_read_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Longest silence from the source while fetching."
    )
    url_fetch_timeout_seconds: float = Field(default=15 * 60.0, gt=0, description="Whole-fetch deadline.")
    url_max_redirects: int = Field(default=5, ge=0)
    url_dns_timeout_seconds: float = Field(default=5.0, gt=0)
    url_max_length: int = Field(default=2048, ge=16)
    ssrf_allow_networks: Annotated[list[IPNetwork], NoDecode] = Field(
        default_factory=list,
        description="Operator allow-list: networks a URL (or webhook) may reach although they are "
        "private/internal. Empty by default. JSON list or comma separated CIDRs.",
    )

    # Progress streams (`GET /api/v1/jobs/{id}/events?follow=true`, Server-Sent Events).
    follow_poll_interval_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often the process's one poller reads new timeline rows for every followed job "
        "(one query per interval, whatever the number of followers).",
    )
    follow_heartbeat_seconds: float = Field(
        default=15.0, gt=0, description="A `: keep-alive` comment after this long without an event."
    )
    follow_max_seconds: float = Field(
        default=600.0,
        gt=0,
        description="Longest a stream stays open; the server then closes it and the client resumes "
        "with `Last-Event-ID`.",
    )
    follow_retry_ms: int = Field(
        default=3000, ge=0, description="The `retry:` field: how long a client waits before reconnecting."
    )
    follow_queue_size: int = Field(
        default=256,
        ge=1,
        description="Events waiting for one stream; a client that falls this far behind is disconnected.",
    )
    follow_max_streams: int = Field(
        default=5000, ge=1, description="Open streams per process; more are refused (503, Retry-After)."
    )

    # OpenAI-compatible endpoints (`POST /v1/audio/transcriptions`, `/v1/audio/translations`).
    openai_wait_seconds: float = Field(
        default=600.0,
        gt=0,
        description="How long `/v1/audio/*` waits for its job before answering 504 with the job's id and "
        "`Location` (the job goes on; the same request sent again answers from it). Shorter when the "
        "client says it gives up sooner (the OpenAI SDK's `X-Stainless-Read-Timeout`).",
    )

    # Kafka trigger.
    trigger_timeout_seconds: float = Field(
        default=10.0, gt=0, description="How long a submission waits for the broker to take its trigger."
    )

    # Jobs.
    default_provider: str = Field(
        default="local", description="The provider of jobs that name none (allowed, and configured)."
    )
    allowed_providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(PROVIDERS),
        description="Operator allow-list: the providers jobs may name (default: every one in the "
        "catalogue). A job also needs its provider configured (its key set).",
    )
    chained_providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [info.name for info in PROVIDERS.values() if info.context_mode == "chained"],
        description="Providers whose jobs default to context_mode=chained (LLMs that use context); "
        "default: the catalogue's.",
    )
    local_model: str = Field(
        default=DEFAULT_LOCAL_MODEL,
        description="The transcriber's default `local` model (STT_LOCAL_MODEL: give both the same value). "
        "Jobs may name it or a catalogue model (tiny.en, base); a job whose model is English-only and "
        "whose language is not is refused.",
    )
    max_delete_after_seconds: int = Field(default=365 * 24 * 3600, ge=60)
    readiness_timeout_seconds: float = Field(default=3.0, gt=0)

    @field_validator("ssrf_allow_networks", "allowed_providers", "chained_providers", mode="before")
    @classmethod
    def _lists_from_env(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("ssrf_allow_networks", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        if isinstance(value, list):
            return [ipaddress.ip_network(str(item), strict=False) for item in value]
        return value

    @field_validator("default_provider", mode="after")
    @classmethod
    def _provider_name(cls, value: str) -> str:
        return value.strip().lower()

    @field_validator("allowed_providers", "chained_providers", mode="after")
    @classmethod
    def _known_providers(cls, value: list[str]) -> list[str]:
        names = [name.strip().lower() for name in value]
        unknown = [name for name in names if name not in PROVIDERS]
        if unknown:
            raise ValueError(f"unknown provider(s) {', '.join(unknown)}; known: {', '.join(PROVIDERS)}")
        return list(dict.fromkeys(names))

    @model_validator(mode="after")
    def _default_provider_is_allowed(self) -> Self:
        if self.default_provider not in self.allowed_providers:
            raise ValueError(
                f"STT_DEFAULT_PROVIDER {self.default_provider!r} is not in STT_ALLOWED_PROVIDERS"
            )
        if not self.provider_configured(self.default_provider):
            raise ValueError(
                f"STT_DEFAULT_PROVIDER {self.default_provider!r} is not configured: "
                f"{missing_setting(self.default_provider)} is not set"
            )
        largest = max(self.max_upload_bytes, self.fetch_max_bytes)
        if largest > self.upload_part_bytes * 10_000:
            raise ValueError(
                "STT_UPLOAD_PART_BYTES is too small: S3 allows 10,000 parts and the largest file "
                f"is {largest} bytes"
            )
        if self.public_base_url is not None:
            self.public_base_url = self.public_base_url.rstrip("/")
        return self

    @property
    def fetch_max_bytes(self) -> int:
        return self.url_fetch_max_bytes or self.max_upload_bytes


def missing_setting(provider: str) -> str:
    """What an operator sets to configure a provider (`STT_<NAME>_API_KEY`; for openai, or a base URL)."""
    key_setting = PROVIDERS[provider].key_setting
    if key_setting is None:
        return "nothing"
    name = f"STT_{key_setting.upper()}"
    if provider == "openai":
        return f"{name} or STT_OPENAI_BASE_URL"
    return name
