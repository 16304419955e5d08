"""The dashboard: server-rendered pages under /ui to watch the fleet, browse tasks with
output thumbnails, follow one task's flow, and try any workflow from a generated form.

Same app, same API keys: a key signs in once through a form, then a signed cookie
(DASHBOARD_SECRET) stands for it. No front-end build step and no CDN: templates, CSS and
a little JavaScript ship inside this package.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import httpx
from comfyui_server.core import Settings, StartupError, hookimpl

from .routes import router
from .session import Signer
from .settings import DashboardSettings
from .state import STATE_KEY, DashboardState
from .thumbnails import Thumbnailer

log = logging.getLogger(__name__)


@hookimpl
def register_routes(settings: Settings) -> list[Any]:
    return router()


@hookimpl
def startup(app: Any, settings: Settings) -> None:
    own = settings.load(DashboardSettings)
    if own.dashboard_secret is not None and len(own.dashboard_secret) < 16:
        raise StartupError("DASHBOARD_SECRET: use at least 16 characters")
    secret = own.dashboard_secret or secrets.token_urlsafe(32)
    app.state[STATE_KEY] = DashboardState(
        engine=app.state.engine,
        pm=app.state.pm,
        keyring=app.state.keyring,
        settings=settings,
        own=own,
        signer=Signer(secret.encode(), own.dashboard_session_hours * 3600),
        thumbnailer=Thumbnailer(
            (settings.data_path / "thumbnails").resolve(),
            httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0), trust_env=False),
            size=own.dashboard_thumbnail_px,
            max_bytes=own.dashboard_thumbnail_max_bytes,
        ),
    )
    if own.dashboard_secret is None and not app.state.keyring.open:
        log.info("DASHBOARD_SECRET is not set: dashboard sign-ins last until this process ends")


@hookimpl
async def shutdown(app: Any) -> None:
    dashboard = app.state.get(STATE_KEY)
    if dashboard is not None:
        await dashboard.thumbnailer.http.aclose()
