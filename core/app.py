"""Build the Litestar app: core routes, plugin routes, and a lifespan that starts the
plugins, the task store and the engine in that order (and stops them in reverse)."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from litestar import Litestar, Request, Response, Router
from litestar.datastructures import State
from litestar.exceptions import HTTPException, SerializationException
from litestar.logging import LoggingConfig
from litestar.openapi import OpenAPIConfig

from . import __version__
from .api.catalog import EndpointController, WorkflowController, health, ready
from .api.schemas import ErrorBody, ErrorDetail
from .api.tasks import SeedSubmitController, TaskController
from .api.workflow_routes import workflow_routes
from .auth import Keyring, authenticate
from .config import Settings, get_settings
from .engine import Engine
from .errors import RequestError
from .hookcall import call_all
from .memory_store import MemoryTaskStore
from .plugins import PluginManager, create_plugin_manager
from .workflows import collect_workflows

log = logging.getLogger("comfyui_server")


def _error_response(status: int, detail: str, extra: list[ErrorDetail]) -> Response:
    return Response(ErrorBody(status_code=status, detail=detail, extra=extra), status_code=status)


def _request_error(_: Request, exc: RequestError) -> Response:
    response = _error_response(
        exc.status_code, exc.message, [ErrorDetail(key=exc.field, message=exc.message)]
    )
    if exc.retry_after is not None:
        response.headers["retry-after"] = str(max(1, round(exc.retry_after)))
    return response


_NAMED_FIELD = re.compile(r"(?:missing required|unknown) field `([^`]+)`")


def _field_of(item: dict) -> str | None:
    """Litestar reports a missing or unknown field under its parent's key ("data" for the
    body itself); the field's own name is in msgspec's message."""
    key, match = item.get("key"), _NAMED_FIELD.search(str(item.get("message", "")))
    if match is None:
        return key
    return match.group(1) if key in (None, "data") else f"{key}.{match.group(1)}"


def _http_error(_: Request, exc: HTTPException) -> Response:
    """Litestar's own errors in our envelope, each naming its field."""
    if isinstance(exc.__cause__, SerializationException):
        detail = f"the request body is not valid JSON: {exc.detail}"
        return _error_response(400, detail, [ErrorDetail(key="body", message=detail)])
    extra = [
        ErrorDetail(key=_field_of(item), message=str(item.get("message")))
        for item in (exc.extra if isinstance(exc.extra, list) else ())
        if isinstance(item, dict)
    ]
    status, detail = exc.status_code, exc.detail
    if extra:  # lead with the fields, not with "Validation failed for POST /api/v1"
        detail = "; ".join(f"{e.key}: {e.message}" if e.key else e.message for e in extra)
        if status == 400 and all((e.key or "").startswith("params.") for e in extra):
            status = 422  # a parameter's value, as on the seed route: the shape was fine
    return _error_response(status, detail, extra)


def create_app(
    settings: Settings | None = None,
    pm: PluginManager | None = None,
    *,
    monitor_options: dict[str, float] | None = None,
) -> Litestar:
    settings = settings or get_settings()
    pm = pm or create_plugin_manager(disabled=settings.disabled_plugins)
    workflows = collect_workflows(pm, settings)  # a bad or duplicate workflow fails here
    store = pm.hook.task_store(settings=settings) or MemoryTaskStore()
    keyring = Keyring(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if not store.durable:
            log.warning("no durable task store is enabled: tasks are lost on restart")
        if keyring.open:
            log.warning(
                "no API key is configured (API_KEYS, ADMIN_API_KEYS, API_KEYS_FILE): "
                "anyone who can reach %s can submit and read every task",
                settings.base_url,
            )
        await store.open()
        # for image URLs and plugins; each ComfyUI endpoint has its own pool (client.py)
        http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0), trust_env=False)
        started: list[str] = []
        engine: Engine | None = None
        try:
            # the engine exists before plugins start, so they can reach it (app.state.engine),
            # and runs only after they have started
            engine = Engine(pm, settings, store, workflows, http, monitor_options=monitor_options)
            app.state.engine = engine
            await call_all(pm.hook.startup, done=started, app=app, settings=settings)
            await engine.start()
            try:
                yield
            finally:
                await engine.stop()
        finally:
            # when a plugin failed to start, those that had started are stopped (and their
            # background work with them); it and the ones after it are not
            not_started = {i.plugin_name for i in pm.hook.startup.get_hookimpls()} - set(started)
            await call_all(pm.hook.shutdown, isolate=True, reverse=True, skip=not_started, app=app)
            if engine is not None:  # also when a plugin or the engine failed to start
                await engine.close()
            await http.aclose()
            await store.close()

    plugin_routes = [h for hs in pm.hook.register_routes(settings=settings) for h in hs or ()]
    typed = workflow_routes(workflows, "")
    api = Router(
        path=settings.route_prefix,
        route_handlers=[
            SeedSubmitController,
            TaskController,
            WorkflowController,
            EndpointController,
            *typed,
        ],
        guards=[authenticate],
    )
    return Litestar(
        route_handlers=[api, health, ready, *plugin_routes],
        lifespan=[lifespan],
        state=State({"pm": pm, "settings": settings, "keyring": keyring}),
        request_max_body_size=settings.max_body_bytes,
        exception_handlers={RequestError: _request_error, HTTPException: _http_error},
        openapi_config=OpenAPIConfig(title="comfyui-server", version=__version__),
        logging_config=LoggingConfig(configure_root_logger=False, log_exceptions="debug"),
    )
