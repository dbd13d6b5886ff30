"""The notifier's settings: the shared connection settings plus webhook delivery knobs (env prefix `STT_`).

Lists come from the environment as JSON (`[30, 120]`) or comma separated (`30,120`).
"""

from __future__ import annotations

import ipaddress
import json
from typing import Annotated, Self

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from stt_common.settings import Settings

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Delays before attempts 2..10: each 2 to 5 times the last, capped at 8 h; 10 attempts over ~23.7 h.
DEFAULT_RETRY_SCHEDULE_SECONDS = (30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 28800.0)


def _split_list(value: object) -> object:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


class NotifierSettings(Settings):
    """Everything `services/notifier` needs."""

    model_config = SettingsConfigDict(env_prefix="STT_", extra="ignore", populate_by_name=True)

    service_name: str = "notifier"
    ops_port: int = 8085

    public_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("STT_PUBLIC_BASE_URL", "STT_API_URL"),
        description="Base URL clients reach the REST API at; webhook payloads of completed jobs carry "
        "`result_url` = `{base}/api/v1/jobs/{id}/result` when it is set (STT_PUBLIC_BASE_URL, "
        "or STT_API_URL as `make up` sets it).",
    )

    webhook_allow_networks: Annotated[list[IPNetwork], NoDecode] = Field(
        default_factory=list,
        description="Operator allow-list: private/internal networks a webhook URL may reach. Empty by "
        "default (public addresses only). Cloud metadata addresses stay blocked regardless.",
    )
    webhook_retry_schedule_seconds: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE_SECONDS),
        description="Delay before each retry (attempt 2, 3, …); attempts = len + 1.",
    )
    webhook_retry_jitter: float = Field(
        default=0.2, ge=0, lt=1, description="Each delay is multiplied by a random factor in 1 ± jitter."
    )
    webhook_retry_after_max_seconds: float = Field(
        default=6 * 3600.0, ge=0, description="Longest `Retry-After` (429/503) honoured."
    )
    webhook_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    webhook_timeout_seconds: float = Field(
        default=15.0, gt=0, description="Whole-attempt deadline (DNS, connect, send, response)."
    )
    webhook_dns_timeout_seconds: float = Field(default=5.0, gt=0)
    webhook_follow_redirects: bool = Field(
        default=False,
        description="Follow 307/308 redirects (each hop checked against SSRF rules). Off by default: "
        "a redirect counts as a failed attempt.",
    )
    webhook_max_redirects: int = Field(default=3, ge=0)
    webhook_max_url_length: int = Field(default=2048, ge=16)
    webhook_concurrency: int = Field(default=8, ge=1, description="Attempts in flight at once.")
    webhook_poll_interval_seconds: float = Field(
        default=1.0, gt=0, description="How often due deliveries are looked for."
    )
    webhook_response_bytes: int = Field(
        default=1024, ge=0, description="Response body bytes kept in an attempt's error."
    )

    @field_validator("webhook_allow_networks", "webhook_retry_schedule_seconds", mode="before")
    @classmethod
    def _lists_from_env(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("webhook_allow_networks", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        if isinstance(value, list):
            return [ipaddress.ip_network(str(item), strict=False) for item in value]
        return value

    @field_validator("webhook_retry_schedule_seconds")
    @classmethod
    def _delays_not_negative(cls, value: list[float]) -> list[float]:
        if any(delay < 0 for delay in value):
            raise ValueError("retry delays must be >= 0")
        return value

    @model_validator(mode="after")
    def _normalise(self) -> Self:
        if self.public_base_url is not None:
            self.public_base_url = self.public_base_url.rstrip("/") or None
        return self

    @property
    def webhook_max_attempts(self) -> int:
        return len(self.webhook_retry_schedule_seconds) + 1

    @property
    def webhook_claim_seconds(self) -> float:
        """How long a claimed delivery is ours: past any attempt's deadline, so no second sender
        can pick it up while the first is still talking to the receiver."""
        return self.webhook_timeout_seconds + self.webhook_dns_timeout_seconds + 30.0
