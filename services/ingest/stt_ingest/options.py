"""Submission options: from a form or JSON, checked against the settings, shaped for the job row."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from stt_common.providers import local_models
from stt_common.providers.catalogue import PROVIDERS
from stt_common.providers.languages import normalise_language
from stt_common.ssrf import UnsafeUrlError, check_url_syntax
from stt_ingest.problems import ApiProblem, FieldError
from stt_ingest.schemas import JobOptions
from stt_ingest.settings import IngestSettings, missing_setting

FORM_FIELDS = frozenset(
    {"language", "provider", "model", "context_mode", "webhook_url", "prompt", "vocabulary", "output",
     "delete_after_seconds", "fallback_providers", "task", "chunk_seconds"}
)  # fmt: skip
_REPEATABLE = frozenset({"vocabulary", "fallback_providers"})


@dataclass(frozen=True)
class ResolvedOptions:
    """Everything a submission decides about its job (besides the media)."""

    provider: str
    model: str | None
    language: str | None
    context_mode: str
    webhook_url: str | None
    delete_after_seconds: int | None
    options: dict[str, Any] = field(default_factory=dict)

    def row_values(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "language": self.language,
            "context_mode": self.context_mode,
            "webhook_url": self.webhook_url,
            "delete_after_seconds": self.delete_after_seconds,
            "options": self.options,
        }


def _problem_from_validation(exc: ValidationError, prefix: Sequence[str | int]) -> ApiProblem:
    errors = [
        FieldError(loc=[*prefix, *error["loc"]], msg=error["msg"], type=error["type"])
        for error in exc.errors(include_url=False, include_input=False)
    ]
    # Each field and what is wrong with it in the detail too, for clients that show only the detail.
    named = "; ".join(_named(error) for error in errors)
    return ApiProblem(422, "validation_error", f"Some options are invalid: {named}.", errors=errors)


def _named(error: FieldError) -> str:
    field = ".".join(str(part) for part in error.loc[1:])  # after `body`/`query`
    return f"{field}: {error.msg}" if field else error.msg


def options_from_form(fields: Mapping[str, list[str]]) -> JobOptions:
    """Form fields (strings) to options. Empty values count as absent, as browsers send them."""
    data: dict[str, Any] = {}
    errors: list[FieldError] = []
    for name, values in fields.items():
        present = [value for value in values if value != ""]
        if name not in FORM_FIELDS:
            errors.append(FieldError(loc=["body", name], msg="Unknown form field.", type="unknown_field"))
            continue
        if not present:
            continue
        if name in _REPEATABLE:
            data[name] = present
            continue
        if len(present) > 1:
            errors.append(
                FieldError(loc=["body", name], msg="Field given more than once.", type="duplicate_field")
            )
            continue
        value = present[0]
        if name == "output":
            try:
                data[name] = json.loads(value)
            except ValueError:
                errors.append(
                    FieldError(loc=["body", name], msg="Must be a JSON object.", type="json_invalid")
                )
            continue
        data[name] = value
    if errors:
        raise ApiProblem(422, "validation_error", "Some form fields are invalid.", errors=errors)
    try:
        return JobOptions.model_validate(data)
    except ValidationError as exc:
        raise _problem_from_validation(exc, ["body"]) from exc


def configured_providers(settings: IngestSettings) -> list[str]:
    """The providers a job may name here: allowed by the operator and configured (their key set), in
    the catalogue's order."""
    return [
        name
        for name in PROVIDERS
        if name in settings.allowed_providers and settings.provider_configured(name)
    ]


def resolve_options(options: JobOptions, settings: IngestSettings) -> ResolvedOptions:
    """Apply defaults and the settings' rules (allowed and configured providers, the languages a
    provider transcribes, webhook URL safety, retention)."""
    errors: list[FieldError] = []
    # "auto" says what omitting it says: detect the language (once, for every chunk).
    language = options.language.lower() if options.language and options.language.lower() != "auto" else None
    provider = (options.provider or settings.default_provider).strip().lower()
    if provider not in settings.allowed_providers:
        allowed = ", ".join(settings.allowed_providers)
        errors.append(
            FieldError(loc=["body", "provider"], msg=f"Unknown provider; one of: {allowed}.", type="enum")
        )
    else:
        errors.extend(_provider_errors(provider, language, settings))
    fallbacks = [name.strip().lower() for name in options.fallback_providers]
    errors.extend(_fallback_errors(provider, fallbacks, language, settings))
    model = options.model
    if provider == "local":
        model = local_models.model_for_job(options.model, language, settings.local_model)
        if options.task == "translate" and model is None:
            # As for a language the default model does not speak: the model that can, not a refusal.
            model = _translating_default(settings)
        errors.extend(_local_model_errors(model, language, settings))
    errors.extend(_task_errors(options.task, provider, model, fallbacks, settings))
    webhook_url = options.webhook_url
    if webhook_url is not None:
        try:
            webhook_url = check_url_syntax(
                webhook_url, allow=settings.ssrf_allow_networks, max_length=settings.url_max_length
            ).url
        except UnsafeUrlError as exc:
            errors.append(FieldError(loc=["body", "webhook_url"], msg=exc.message, type=exc.code))
    errors.extend(_chunk_length_errors(options.chunk_seconds, provider))
    if (
        options.delete_after_seconds is not None
        and options.delete_after_seconds > settings.max_delete_after_seconds
    ):
        errors.append(
            FieldError(
                loc=["body", "delete_after_seconds"],
                msg=f"At most {settings.max_delete_after_seconds} seconds.",
                type="less_than_equal",
            )
        )
    if errors:
        # The messages in the detail too: clients that show only the detail still say what to do.
        detail = " ".join(["Some options are invalid.", *(error.msg for error in errors)])
        raise ApiProblem(422, "validation_error", detail, errors=errors)
    context_mode = options.context_mode or (
        "chained" if provider in settings.chained_providers else "parallel"
    )
    output = options.output.model_dump() if options.output is not None else {}
    return ResolvedOptions(
        provider=provider,
        model=model,
        language=language,
        context_mode=context_mode,
        webhook_url=webhook_url,
        delete_after_seconds=options.delete_after_seconds,
        options={
            "prompt": options.prompt,
            "vocabulary": list(options.vocabulary),
            "output": output,
            **({"fallback_providers": fallbacks} if fallbacks else {}),
            # Only when not the default: the options of every transcription job stay as they were.
            **({"task": options.task} if options.task != "transcribe" else {}),
            **({"chunk_seconds": options.chunk_seconds} if options.chunk_seconds is not None else {}),
        },
    )


def _provider_errors(provider: str, language: str | None, settings: IngestSettings) -> list[FieldError]:
    """What the transcriber could not do for an allowed provider: call it without its key, or ask it
    for a language it does not transcribe."""
    if not settings.provider_configured(provider):
        configured = ", ".join(configured_providers(settings)) or "none"
        message = (
            f"Provider {provider!r} is not configured on this deployment (no {missing_setting(provider)}); "
            f"configured: {configured}. Choose one of those, or ask the operator to set the key."
        )
        return [FieldError(loc=["body", "provider"], msg=message, type="provider_not_configured")]
    languages = PROVIDERS[provider].capabilities.languages
    code = normalise_language(language)
    if languages is not None and code is not None and code not in languages:
        names = ", ".join(sorted(languages))
        message = (
            f"Provider {provider!r} transcribes only {names}, not language {language!r}: "
            "choose one of those languages, or another provider."
        )
        return [FieldError(loc=["body", "language"], msg=message, type="unsupported_language")]
    return []


def _fallback_errors(
    provider: str, fallbacks: list[str], language: str | None, settings: IngestSettings
) -> list[FieldError]:
    """Each fallback must be a provider the job could have named itself, and a different one."""
    errors: list[FieldError] = []
    for position, name in enumerate(fallbacks):
        loc: list[str | int] = ["body", "fallback_providers", position]
        if name == provider or name in fallbacks[:position]:
            message = f"{name!r} is already tried before; name each provider once."
            errors.append(FieldError(loc=loc, msg=message, type="duplicate"))
        elif name not in settings.allowed_providers:
            allowed = ", ".join(settings.allowed_providers)
            errors.append(FieldError(loc=loc, msg=f"Unknown provider; one of: {allowed}.", type="enum"))
        else:
            errors.extend(
                FieldError(loc=loc, msg=error.msg, type=error.type)
                for error in _provider_errors(name, language, settings)
            )
    return errors


def _translating_default(settings: IngestSettings) -> str | None:
    """The model of a local translate job that names none: the server's default if it can translate
    (None: stored as "the default"), else the multilingual model."""
    if local_models.is_english_only(local_models.configured_model(settings.local_model)):
        return local_models.MULTILINGUAL_MODEL
    return None


def _task_errors(
    task: str, provider: str, model: str | None, fallbacks: list[str], settings: IngestSettings
) -> list[FieldError]:
    """A translate job needs providers that translate (every fallback too: a chunk a fallback
    transcribed would come back untranslated), and for `local` a multilingual model."""
    if task != "translate":
        return []
    able = [name for name in configured_providers(settings) if PROVIDERS[name].capabilities.translate]
    choose = f"choose one of: {', '.join(able)}" if able else "no provider configured here can"
    errors: list[FieldError] = []
    for position, name in enumerate([provider, *fallbacks]):
        info = PROVIDERS.get(name)
        if info is None or info.capabilities.translate:
            continue
        loc: list[str | int] = (
            ["body", "provider"] if position == 0 else ["body", "fallback_providers", position - 1]
        )
        message = f"Provider {name!r} cannot translate (task=translate); {choose}, or use task=transcribe."
        errors.append(FieldError(loc=loc, msg=message, type="translate_unsupported"))
    resolved = local_models.resolve_model_name(model, settings.local_model) if provider == "local" else None
    if resolved is not None and local_models.is_english_only(resolved):
        message = (
            f"Model {resolved!r} is English-only and cannot translate: use model "
            f"{local_models.MULTILINGUAL_MODEL!r} (multilingual), or task=transcribe."
        )
        errors.append(FieldError(loc=["body", "model"], msg=message, type="translate_unsupported"))
    return errors


def _local_model_errors(
    model: str | None, language: str | None, settings: IngestSettings
) -> list[FieldError]:
    """What the transcriber's `local` provider would refuse: a model it does not have, or an
    English-only model (the job's, else the server's default) asked for another language."""
    resolved = local_models.resolve_model_name(model, settings.local_model)
    if resolved is None:
        names = local_models.available_models(settings.local_model)
        message = local_models.unknown_model_message(str(model).strip(), names)
        return [FieldError(loc=["body", "model"], msg=message, type="enum")]
    if normalise_language(language) not in (None, "en") and local_models.is_english_only(resolved):
        message = local_models.english_only_message(resolved, str(language))
        return [FieldError(loc=["body", "language"], msg=message, type="unsupported_language")]
    return []


def request_hash(payload: Mapping[str, Any]) -> str:
    """A stable digest of a submission, for Idempotency-Key comparisons."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _chunk_length_errors(chunk_seconds: float | None, provider: str) -> list[FieldError]:
    """A chunk length the provider cannot take in one request (the chunker would have to cut shorter
    chunks than asked: say so now instead)."""
    spec = PROVIDERS.get(provider)
    limit = spec.capabilities.max_chunk_seconds() if spec is not None else None
    if chunk_seconds is None or limit is None or chunk_seconds <= limit:
        return []
    message = (
        f"Provider {provider!r} takes at most {int(limit)} s of audio per request: ask for chunk_seconds "
        f"of at most {int(limit)}, or omit it for the server's default."
    )
    return [FieldError(loc=["body", "chunk_seconds"], msg=message, type="less_than_equal")]
