"""Typed settings shared by every stage.

Each service builds one `Settings` (or its own subclass) in `main()` and passes it down;
nothing in the code base reads `os.environ` on its own.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Values that ship in examples and must never reach production unchanged.
PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "secret", "password", "minioadmin", "dev"})


class Settings(BaseSettings):
    """Connection settings and runner knobs every stage needs (env prefix `STT_`)."""

    model_config = SettingsConfigDict(env_prefix="STT_", extra="ignore")

    development: bool = Field(
        default=False, description="Allow placeholder secrets and other conveniences for local work."
    )
    service_name: str = Field(default="stt", description="The name in logs and metrics.")
    log_level: str = Field(default="INFO", description="Python logging level (DEBUG, INFO, WARNING, ...).")

    database_url: str = Field(
        default="postgresql+asyncpg://postgres@127.0.0.1:5432/stt",
        description="Postgres (SQLAlchemy URL, asyncpg).",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="Redis: rate limits and vendor budgets."
    )

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092", description="Kafka broker(s), comma separated."
    )
    kafka_enable_idempotence: bool = Field(
        default=True, description="Idempotent producer; off against brokers without InitProducerId (Tansu)."
    )
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_session_timeout_ms: int = Field(
        default=10_000, ge=1000, description="How soon a dead member is noticed."
    )
    kafka_max_poll_interval_ms: int = Field(default=60_000, ge=1000)
    chunks_topic_partitions: int = Field(
        default=12,
        ge=1,
        description="Partitions of `stt.chunks.ready` (and its DLQ) when topics are created.",
    )
    topic_partitions: int = Field(default=3, ge=1, description="Partitions of every other topic.")
    topic_replication_factor: int = Field(default=1, ge=1)

    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint; AWS when unset.")
    s3_region: str = "us-east-1"
    s3_bucket: str = Field(default="stt", description="The bucket every job's objects go to (`jobs/{id}/…`).")
    s3_access_key_id: str = ""
    s3_secret_access_key: SecretStr = SecretStr("")
    s3_multipart_threshold_bytes: int = Field(default=16 * 1024 * 1024, ge=5 * 1024 * 1024)
    s3_multipart_chunk_bytes: int = Field(default=8 * 1024 * 1024, ge=5 * 1024 * 1024)

    work_dir: str | None = Field(
        default=None, description="Scratch space for audio (an emptyDir in Kubernetes); system temp if unset."
    )

    # Stage runner.
    ops_host: str = "127.0.0.1"
    ops_port: int = Field(default=8081, description="Port of /healthz, /readyz and /metrics.")
    max_in_flight: int = Field(default=4, ge=1, description="Messages a stage handles at once.")
    handler_attempts: int = Field(
        default=3, ge=1, description="In-process tries of a failing handler before the stage stops."
    )
    drain_timeout_seconds: float = Field(
        default=25.0, gt=0, description="On SIGTERM, how long in-flight messages may take to finish."
    )
    liveness_timeout_seconds: float = Field(
        default=60.0, gt=0, description="The loop must tick within this or /healthz fails."
    )

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Self:
        if self.development:
            return self
        secret = self.s3_secret_access_key.get_secret_value()
        if self.s3_endpoint_url and secret.lower() in PLACEHOLDER_SECRETS:
            raise ValueError(
                "STT_S3_SECRET_ACCESS_KEY is empty or a placeholder; set a real secret "
                "(or STT_DEVELOPMENT=true for local work)"
            )
        return self

    def kafka_common_kwargs(self) -> dict[str, object]:
        """Connection keyword arguments shared by aiokafka producers, consumers and admin clients."""
        kwargs: dict[str, object] = {
            "bootstrap_servers": self.kafka_bootstrap_servers,
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            kwargs["sasl_mechanism"] = self.kafka_sasl_mechanism
            kwargs["sasl_plain_username"] = self.kafka_sasl_username
            kwargs["sasl_plain_password"] = (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            )
        return kwargs


def _key(setting: str, *vendor_names: str) -> Any:
    """A provider key read from `STT_<SETTING>` or, failing that, the vendor's own variable name."""
    return Field(
        default=None,
        # Ours first: the vendor's own name is only the fallback (matching is case-insensitive, so the
        # field's own name would match the vendor's variable: it is not listed).
        validation_alias=AliasChoices(f"STT_{setting.upper()}", *vendor_names),
        description=f"API key (STT_{setting.upper()}, or {' / '.join(vendor_names)}).",
    )


class ProviderSettings(Settings):
    """Which remote providers this deployment can use: their keys, endpoints and default models.

    Shared by ingest (which lists the configured providers and refuses jobs for the others) and the
    transcriber (which calls them). Ingest never sends a key anywhere; it only checks that one is set.
    """

    model_config = SettingsConfigDict(env_prefix="STT_", extra="ignore", populate_by_name=True)

    openai_api_key: SecretStr | None = _key("openai_api_key", "OPENAI_API_KEY")
    openai_base_url: str | None = Field(
        default=None, description="An OpenAI-compatible server (speaches, vLLM, ...); it may need no key."
    )
    openai_model: str = "whisper-1"

    gemini_api_key: SecretStr | None = _key("gemini_api_key", "GEMINI_API_KEY", "GOOGLE_API_KEY")
    gemini_base_url: str | None = None
    gemini_model: str = "gemini-2.5-flash"

    elevenlabs_api_key: SecretStr | None = _key("elevenlabs_api_key", "ELEVENLABS_API_KEY")
    elevenlabs_base_url: str | None = None
    elevenlabs_model: str = "scribe_v2"

    hispeech_api_key: SecretStr | None = _key("hispeech_api_key", "HISPEECH_API_KEY")
    hispeech_base_url: str | None = None
    hispeech_model: str = "model-01052025"

    wavam_api_key: SecretStr | None = _key("wavam_api_key", "WAVAM_API_KEY")
    wavam_base_url: str | None = None
    wavam_model: str = "default"

    def provider_key(self, name: str) -> str | None:
        """The provider's key, None when unset or blank (and for `local`, which needs none)."""
        value = getattr(self, f"{name}_api_key", None)
        secret = value.get_secret_value().strip() if isinstance(value, SecretStr) else ""
        return secret or None

    def provider_base_url(self, name: str) -> str | None:
        value = getattr(self, f"{name}_base_url", None)
        return value.strip() or None if isinstance(value, str) else None

    def provider_model(self, name: str) -> str | None:
        value = getattr(self, f"{name}_model", None)
        return value.strip() or None if isinstance(value, str) else None

    def provider_configured(self, name: str) -> bool:
        """Can this deployment call the provider: it needs no key, has one, or (openai) points at a
        compatible server that may need none."""
        if name == "local":
            return True
        if name == "openai" and self.provider_base_url(name):
            return True
        return self.provider_key(name) is not None
