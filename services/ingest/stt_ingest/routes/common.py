"""Small helpers the routers share."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from stt_ingest.state import AppState, app_state

StateDep = Annotated[AppState, Depends(app_state)]


def base_url(request: Request, state: AppState) -> str:
    """Where clients reach us: the configured public URL, else this request's own base URL."""
    if state.settings.public_base_url:
        return state.settings.public_base_url
    return str(request.base_url).rstrip("/")
