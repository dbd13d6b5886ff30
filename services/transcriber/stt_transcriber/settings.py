from __future__ import annotations

from pydantic import Field

from stt_common.providers.local_models import DEFAULT_LOCAL_MODEL
from stt_common.settings import ProviderSettings


class TranscriberSettings(ProviderSettings):
    service_name: str = "transcriber"
    ops_port: int = 8083
    max_in_flight: int = Field(
        default=1, ge=1, description="Chunks handled at once; raise it for remote providers (I/O-bound)."
    )
    lease_seconds: float = Field(default=60.0, gt=0, description="How long a claimed chunk stays ours.")
    lease_renew_seconds: float = Field(
        default=15.0, gt=0, description="How often a held chunk's lease is renewed while it is worked on."
    )
    provider_attempts: int = Field(
        default=5, ge=1, description="Tries per provider call on transient errors."
    )
    backoff_base_seconds: float = Field(
        default=1.0, ge=0, description="First retry delay (doubled per try, full jitter)."
    )
    backoff_max_seconds: float = Field(
        default=60.0, ge=0, description="Longest retry delay, a vendor's `Retry-After` included."
    )
    coverage_gap_seconds: float = Field(
        default=15.0, gt=0, description="Speech left untranscribed this long counts as a gap (retried)."
    )
    coverage_retries: int = Field(default=2, ge=0, description="Extra tries when a chunk has a speech gap.")
    context_segments: int = Field(default=3, ge=0, description="Previous segments given in chained mode.")

    # The embedded provider.
    local_model: str = Field(
        default=DEFAULT_LOCAL_MODEL,
        description="The default model of jobs that name none: tiny.en, base, or a faster-whisper model "
        "name or directory (give ingest the same value).",
    )
    local_model_cache_dir: str | None = Field(
        default=None,
        description="Where the `base` model is joined on first use; ~/.cache/stt-pipeline/models when unset.",
    )
    local_device: str = "auto"
    local_compute_type: str | None = Field(
        default=None, description="int8 on CPU, float16 on CUDA when unset."
    )
    local_beam_size: int = Field(default=5, ge=1)
    local_cpu_threads: int = Field(default=0, ge=0)
    local_condition_on_previous_text: bool = Field(
        default=True, description="Whisper's own context between 30 s windows (a job may override it)."
    )
    local_vad_filter: bool = Field(
        default=False,
        description="Skip what Silero VAD calls non-speech before decoding; off: it saved no words on the "
        "benchmark and cost words on conversational speech (docs/quality.md).",
    )

    # Remote vendors (their keys, endpoints and models are in `ProviderSettings`).
    provider_timeout_seconds: float = Field(
        default=300.0, gt=0, description="Per HTTP call to a remote vendor (openai, gemini, elevenlabs)."
    )

    # Google Gemini (google-genai).
    gemini_inline_max_bytes: int = Field(
        default=15 * 1024 * 1024, ge=0, description="Larger chunks go through the Files API."
    )
    gemini_temperature: float = Field(default=0.0, ge=0)

    # ElevenLabs Speech-to-Text (Scribe).
    elevenlabs_diarize: bool = False
    elevenlabs_tag_audio_events: bool = False

    # wav.am: every call names a project, found or made by this name once per process.
    wavam_project: str = Field(default="stt-pipeline", min_length=1)

    # Per-provider request budget, shared by every replica through Redis (`stt_transcriber.budget`).
    # Env values are JSON objects, e.g. STT_PROVIDER_CONCURRENCY='{"wavam": 2}'; a provider left out
    # (or given 0) is unlimited.
    provider_requests_per_minute: dict[str, int] = Field(
        default_factory=dict, description="Calls that may start per 60 s, by provider, across all replicas."
    )
    provider_concurrency: dict[str, int] = Field(
        default_factory=dict, description="Calls in flight at once, by provider, across all replicas."
    )
    budget_lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long a concurrency slot outlives a replica that died holding it (renewed every "
        "third of it while held).",
    )
    budget_patience_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How long a chunk waits for its vendor's budget before it is handed back to the queue, "
        "so that the replica's in-flight places go to other providers' chunks meanwhile.",
    )
