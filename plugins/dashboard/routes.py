"""The /ui pages: fleet, tasks, one task, workflows and their "try it" forms, sign-in.

Every page is server-rendered; the few live parts (the fleet table, a task's progress) are
HTML fragments that dashboard.js fetches again every second or two. A page needs a
signed-in key unless the API itself is open; a key sees its own tasks, an admin key all.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from comfyui_server.core import RequestError, Task
from comfyui_server.core.api.params import TaskId
from comfyui_server.core.models import utcnow
from comfyui_server.core.records import output_record, render_task
from comfyui_server.core.store import TaskQuery
from litestar import Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import CacheControlHeader
from litestar.handlers import BaseRouteHandler
from litestar.params import FromPath, FromQuery, PathParameter
from litestar.response import File, Redirect
from litestar.static_files import create_static_files_router

from .forms import controls, form_params
from .render import HERE, PREFIX, html
from .session import COOKIE, Viewer, check_key
from .state import DashboardState, of
from .thumbnails import MEDIA_TYPE, ThumbnailError
from .views import durations, error_view, fleet_rows, output_kind, param_rows, timeline

log = logging.getLogger(__name__)

PAGE_SIZE = 25
STATUSES = ("queued", "dispatched", "running", "completed", "failed", "cancelled")
TEXT_PREVIEW_BYTES = 64 * 1024
"""Text outputs up to this size are shown inline on a task's page."""
THUMBS_IN_LIST = 4


# ---- who is asking ------------------------------------------------------------------------


class SignInRequired(Exception):
    """No valid session: pages redirect to the sign-in form, fragments answer 401."""


class CrossSiteRequest(Exception):
    """A form was posted from another site (CSRF): refused with 403."""


def current_viewer(connection: ASGIConnection) -> Viewer | None:
    dashboard = of(connection)
    if dashboard.keyring.open:
        return Viewer(key=None)
    cookie = connection.cookies.get(COOKIE)
    key = dashboard.signer.verify(cookie, dashboard.keyring) if cookie else None
    return Viewer(key=key) if key else None


def same_origin(connection: ASGIConnection) -> bool:
    """Browsers say where a POST comes from (Sec-Fetch-Site, Origin); with SameSite=Lax
    cookies this stops cross-site forms from cancelling or submitting in a user's name,
    even when the API is open."""
    if connection.headers.get("sec-fetch-site") == "cross-site":
        return False
    origin = connection.headers.get("origin")
    if origin:
        return origin != "null" and urlsplit(origin).netloc == connection.headers.get("host")
    return True


async def dashboard_guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    if connection.scope["method"] not in ("GET", "HEAD") and not same_origin(connection):
        raise CrossSiteRequest
    viewer = current_viewer(connection)
    connection.state.viewer = viewer
    if viewer is None and not handler.opt.get("public"):
        raise SignInRequired


def viewer_of(request: Request) -> Viewer:
    return request.state.viewer


def _safe_next(target: str | None) -> str:
    """Only our own pages are valid targets after sign-in (no open redirect)."""
    if target and target.startswith(PREFIX + "/") and not target.startswith("//"):
        if "\\" not in target and not urlsplit(target).netloc:
            return target
    return f"{PREFIX}/fleet"


def _on_sign_in_required(request: Request, _: SignInRequired) -> Response:
    if request.method == "GET" and not request.route_handler.opt.get("fragment"):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return Redirect(f"{PREFIX}/login?{urlencode({'next': target})}", status_code=303)
    return html(
        "error.html",
        401,
        title="Sign-in required",
        message="Sign in with an API key to see this page.",
    )


def _on_cross_site(_: Request, __: CrossSiteRequest) -> Response:
    return html(
        "error.html", 403, title="Refused", message="This form was posted from another site."
    )


def _on_request_error(request: Request, exc: RequestError) -> Response:
    return html(
        "error.html",
        exc.status_code,
        title=f"Error {exc.status_code}",
        message=exc.message,
        viewer=request.state.get("viewer"),
    )


async def visible_task(request: Request, task_id: int) -> Task:
    """The task if this viewer may see it; 404 otherwise (as the API answers)."""
    task = await of(request).engine.store.get(task_id)
    if task is None or not viewer_of(request).sees(task):
        raise RequestError(f"no task with id {task_id}", field="task_id", status_code=404)
    return task


# ---- sign-in ---------------------------------------------------------------------------------


@get("/", opt={"public": True})
async def home(request: Request) -> Redirect:
    return Redirect(f"{PREFIX}/fleet" if request.state.viewer else f"{PREFIX}/login")


@get("/login", opt={"public": True})
async def login_form(request: Request, next: FromQuery[str | None] = None) -> Response:
    return html(
        "login.html",
        viewer=request.state.viewer,
        next=_safe_next(next),
        open=of(request).keyring.open,
        error=None,
    )


@post("/login", opt={"public": True}, status_code=303)
async def login(request: Request) -> Response:
    form = await request.form()
    target = _safe_next(str(form.get("next") or ""))
    dashboard = of(request)
    if dashboard.keyring.open:
        return Redirect(target, status_code=303)
    key = check_key(dashboard.keyring, str(form.get("key") or ""))
    if key is None:
        return html(
            "login.html", 401, viewer=None, next=target, open=False, error="That key is not valid."
        )
    response = Redirect(target, status_code=303)
    response.set_cookie(
        COOKIE,
        dashboard.signer.issue(key),
        max_age=int(dashboard.signer.lifetime),
        path=PREFIX,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response


@post("/logout", opt={"public": True}, status_code=303)
async def logout() -> Response:
    response = Redirect(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(COOKIE, path=PREFIX)
    return response


# ---- fleet ------------------------------------------------------------------------------------


def _fleet_context(dashboard: DashboardState) -> dict[str, Any]:
    engine = dashboard.engine
    return {"rows": fleet_rows(engine.fleet.states(), engine.workflows)}


@get("/fleet")
async def fleet(request: Request) -> Response:
    return html("fleet.html", viewer=viewer_of(request), nav="fleet", **_fleet_context(of(request)))


@get("/fleet/live", opt={"fragment": True})
async def fleet_live(request: Request) -> Response:
    return html("fleet_live.html", **_fleet_context(of(request)))


# ---- tasks ------------------------------------------------------------------------------------


def _thumbs(task: Task) -> list[tuple[int, Any, str]]:
    return [(i, o, output_kind(o.content_type)) for i, o in enumerate(task.outputs)]


@get("/tasks")
async def tasks(
    request: Request,
    status: FromQuery[str | None] = None,
    workflow: FromQuery[str | None] = None,
    before: FromQuery[int | None] = None,
) -> Response:
    viewer, dashboard = viewer_of(request), of(request)
    status = status if status in STATUSES else None
    workflow = workflow or None
    if before is not None and not 0 < before < 2**63:  # a hand-edited link: the first page
        before = None
    found = await dashboard.engine.store.list_tasks(
        TaskQuery(
            status=status,
            workflow=workflow,
            client=viewer.client_filter,
            before_id=before,
            limit=PAGE_SIZE + 1,
        )
    )
    page, more = found[:PAGE_SIZE], len(found) > PAGE_SIZE
    filters = {k: v for k, v in (("status", status), ("workflow", workflow)) if v}
    now = utcnow()
    return html(
        "tasks.html",
        viewer=viewer,
        nav="tasks",
        rows=[(t, durations(t, now), _thumbs(t)[:THUMBS_IN_LIST]) for t in page],
        statuses=STATUSES,
        workflows=dashboard.engine.workflows.names(),
        status=status,
        workflow=workflow,
        before=before,
        next_url=f"?{urlencode({**filters, 'before': page[-1].id})}" if more else None,
        first_url=f"?{urlencode(filters)}" if before else None,
    )


async def _task_live_context(dashboard: DashboardState, task: Task) -> dict[str, Any]:
    events = await dashboard.engine.store.events(task.id)
    record = await render_task(task, dashboard.pm)
    outputs = []
    for index, output in enumerate(record.outputs):
        kind = output_kind(output.content_type)
        text = None
        if kind == "text" and output.url and output.size <= TEXT_PREVIEW_BYTES:
            text = await dashboard.thumbnailer.read_text(output.url, TEXT_PREVIEW_BYTES)
        outputs.append((index, output, kind, text))
    now = utcnow()
    return {
        "task": task,
        "stages": timeline(events, now, task.is_final),
        "durations": durations(task, now),
        "error": error_view(task),
        "outputs": outputs,
    }


@get("/tasks/{task_id:int}")
async def task_page(request: Request, task_id: TaskId) -> Response:
    task = await visible_task(request, task_id)
    workflow = of(request).engine.workflows.get(task.workflow)
    return html(
        "task.html",
        viewer=viewer_of(request),
        nav="tasks",
        params=param_rows(task, workflow),
        **await _task_live_context(of(request), task),
    )


@get("/tasks/{task_id:int}/live", opt={"fragment": True})
async def task_live(request: Request, task_id: TaskId) -> Response:
    task = await visible_task(request, task_id)
    return html("task_live.html", **await _task_live_context(of(request), task))


@post("/tasks/{task_id:int}/cancel", status_code=303)
async def cancel(request: Request, task_id: TaskId) -> Response:
    await visible_task(request, task_id)
    try:
        await of(request).engine.cancel(task_id)
    except RequestError as exc:
        if exc.status_code != 409:  # already ended: show the page as it is
            raise
    return Redirect(f"{PREFIX}/tasks/{task_id}", status_code=303)


@get("/thumbs/{task_id:int}/{index:int}", opt={"fragment": True})
async def thumbnail(
    request: Request, task_id: TaskId, index: Annotated[int, PathParameter(ge=0, le=10_000)]
) -> Response:
    task = await visible_task(request, task_id)
    if not 0 <= index < len(task.outputs):
        raise RequestError(f"task {task_id} has no output {index}", field="index", status_code=404)
    output = task.outputs[index]
    dashboard = of(request)
    record = await output_record(output, dashboard.pm)
    if output_kind(output.content_type) != "image" or not record.url:
        raise RequestError("this output has no thumbnail", field="index", status_code=404)
    try:
        path = await dashboard.thumbnailer.get(f"{output.storage}:{output.key}", record.url)
    except ThumbnailError as exc:
        log.warning("task %s output %s: %s", task_id, index, exc)
        raise RequestError("no thumbnail for this output", field="index", status_code=404) from None
    return File(
        path,
        filename=path.name,
        media_type=MEDIA_TYPE,
        content_disposition_type="inline",
        headers={"cache-control": "private, max-age=86400"},
    )


# ---- workflows ----------------------------------------------------------------------------------


@get("/workflows")
async def workflows(request: Request) -> Response:
    engine = of(request).engine
    states = engine.fleet.states()
    items = [
        (w, engine.workflows.owner(w.name), [s.name for s in states if s.can_run(w.node_classes)])
        for w in engine.workflows
    ]
    return html("workflows.html", viewer=viewer_of(request), nav="workflows", items=items)


def _workflow(request: Request, name: str) -> Any:
    workflow = of(request).engine.workflows.get(name)
    if workflow is None:
        raise RequestError(f"no workflow named {name!r}", field="name", status_code=404)
    return workflow


@get("/workflows/{name:str}")
async def workflow_form(request: Request, name: FromPath[str]) -> Response:
    workflow = _workflow(request, name)
    return html(
        "workflow.html",
        viewer=viewer_of(request),
        nav="workflows",
        workflow=workflow,
        controls=controls(workflow),
        errors={},
        message=None,
    )


@post("/workflows/{name:str}", status_code=303)
async def workflow_submit(request: Request, name: FromPath[str]) -> Response:
    """Submit a task from the form, as `POST /api/v1` would, then show its page."""
    workflow, viewer, dashboard = _workflow(request, name), viewer_of(request), of(request)
    engine = dashboard.engine
    form = await request.form()
    params, shown, errors = await form_params(workflow, form, dashboard.settings.max_image_bytes)
    message, status = "Some values need fixing.", 422
    if not errors:
        try:
            dashboard.keyring.take(viewer.key)  # the API's rate limit applies
            await engine.check_capacity()
            task, _ = await engine.submit(name, params, client=viewer.name)
        except RequestError as exc:
            message, status = exc.message, exc.status_code
            field = (exc.field or "").removeprefix("params.")
            if field in workflow.params:
                errors[field] = exc.message
        else:
            return Redirect(f"{PREFIX}/tasks/{task.id}", status_code=303)
    return html(
        "workflow.html",
        status,
        viewer=viewer,
        nav="workflows",
        workflow=workflow,
        controls=controls(workflow, shown),
        errors=errors,
        message=message,
    )


def router() -> list[Any]:
    pages = Router(
        path=PREFIX,
        route_handlers=[
            home,
            login_form,
            login,
            logout,
            fleet,
            fleet_live,
            tasks,
            task_page,
            task_live,
            cancel,
            thumbnail,
            workflows,
            workflow_form,
            workflow_submit,
        ],
        guards=[dashboard_guard],
        exception_handlers={
            SignInRequired: _on_sign_in_required,
            CrossSiteRequest: _on_cross_site,
            RequestError: _on_request_error,
        },
        include_in_schema=False,
    )
    static = create_static_files_router(
        path=f"{PREFIX}/static",
        directories=[HERE / "static"],
        include_in_schema=False,
        cache_control=CacheControlHeader(max_age=3600),
    )
    return [pages, static]
