"""`GET /api/v1/providers`: the providers this deployment allows, which of them are configured, and
what each can do. Ingest only checks whether a provider's key is set; no key is ever shown."""

from __future__ import annotations

from fastapi import APIRouter

from stt_common.providers import local_models
from stt_common.providers.catalogue import PROVIDERS, ProviderInfo
from stt_ingest.auth import PrincipalDep
from stt_ingest.problems import problem_responses
from stt_ingest.routes.common import StateDep
from stt_ingest.schemas import ProviderCapabilitiesView, ProviderList, ProviderView
from stt_ingest.settings import IngestSettings

router = APIRouter(prefix="/api/v1", tags=["providers"])


def _models(info: ProviderInfo, settings: IngestSettings) -> tuple[str, list[str]]:
    """The default model of jobs that name none, and the known models (the default among them)."""
    if info.name == "local":
        return (
            local_models.configured_model(settings.local_model),
            local_models.available_models(settings.local_model),
        )
    default = settings.provider_model(info.name) or info.default_model
    models = list(info.models)
    if default not in models:
        models.append(default)
    return default, models


def provider_view(info: ProviderInfo, settings: IngestSettings) -> ProviderView:
    default_model, models = _models(info, settings)
    capabilities = info.capabilities
    return ProviderView(
        name=info.name,
        title=info.title,
        configured=settings.provider_configured(info.name),
        default=info.name == settings.default_provider,
        default_model=default_model,
        models=models,
        context_mode="chained" if info.name in settings.chained_providers else "parallel",
        capabilities=ProviderCapabilitiesView(
            timestamps=capabilities.timestamps,
            diarization=capabilities.diarization,
            prompt=capabilities.prompt,
            translate=capabilities.translate,
            languages=sorted(capabilities.languages) if capabilities.languages is not None else None,
            max_request_bytes=capabilities.max_request_bytes,
            max_request_seconds=capabilities.max_request_seconds,
        ),
    )


@router.get(
    "/providers",
    response_model=ProviderList,
    summary="The providers you may choose, and what each can do",
    description="Every provider this deployment allows, in the catalogue's order: whether it is "
    "configured (its key is set; a job naming one that is not is refused with 422), its default model "
    "and known models, its default context mode, and its capabilities (timestamps, speaker labels, "
    "prompt, the only languages it transcribes, request limits). No key is ever shown.",
    responses=problem_responses(401),
)
async def list_providers(state: StateDep, principal: PrincipalDep) -> ProviderList:
    settings = state.settings
    items = [
        provider_view(info, settings)
        for info in PROVIDERS.values()
        if info.name in settings.allowed_providers
    ]
    return ProviderList(default_provider=settings.default_provider, items=items)
