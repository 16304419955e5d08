"""Every hook comfyui-server calls: the single source of truth for plugin authors.

Two kinds of hooks:

* Registration hooks (``register_*``, ``task_store``) are synchronous and run once while the
  app or the CLI is built, possibly with no event loop. An ``async def`` implementation of one
  is rejected at start-up.
* Runtime hooks may be ``def`` or ``async def``. Core calls them through
  ``comfyui_server.core.hookcall``: implementations run one at a time in pluggy's order
  (tryfirst, then the most recently registered, ..., then trylast), each awaited before the
  next. "first" hooks stop at the first result that is not None *after awaiting*; "all" hooks
  collect every result. Wrappers are not supported on runtime hooks.

A synchronous implementation must be quick and must not block (no file or network I/O);
do blocking work inside ``async def`` with ``await asyncio.to_thread(...)``.
Built-in fallbacks are ``trylast``, so any plugin you install runs before them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click
    from litestar import Litestar
    from litestar.types import ControllerRouterHandler

    from .config import Settings
    from .models import (
        Artifact,
        EndpointState,
        OutputRef,
        StoredOutput,
        Task,
        TaskEvent,
        TaskProgress,
        TaskResult,
    )
    from .store import TaskStore
    from .workflows import Workflow

PROJECT = "comfyui_server"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --------------------------------------------------------------------------------------------
# Registration: synchronous, called once.
# --------------------------------------------------------------------------------------------


@hookspec
def register_workflows(register: Callable[[Workflow], None], settings: Settings) -> None:
    """Call ``register(workflow)`` for each workflow this plugin ships.

    All implementations run. A workflow name registered by two plugins stops start-up with an
    error naming both: disable one of them to replace a workflow.
    """


@hookspec
def register_routes(settings: Settings) -> Sequence[ControllerRouterHandler] | None:
    """Return Litestar controllers, routers or handlers to mount beside the core API.

    All implementations run; their lists are joined. Paths are absolute: prefix them with
    ``settings.route_prefix`` yourself when they belong under the API prefix.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``comfyui-server`` command line. All implementations run."""


@hookspec(firstresult=True)
def task_store(settings: Settings) -> TaskStore | None:
    """Return the object that keeps tasks (see ``core.store.TaskStore``), or None.

    First result wins. With no implementation, or all returning None, core keeps tasks in
    memory, which loses them on restart. Built-in: ``database`` (SQLite or PostgreSQL).
    """


# --------------------------------------------------------------------------------------------
# Lifecycle: may be async.
# --------------------------------------------------------------------------------------------


@hookspec
def startup(app: Litestar, settings: Settings) -> None:
    """Open pools and clients, check your settings. All implementations, in call order,
    inside the app's lifespan and before any task runs. Raise ``core.StartupError`` with a
    message naming the variable to stop start-up."""


@hookspec
def shutdown(app: Litestar) -> None:
    """Release what ``startup`` opened. All implementations, in reverse call order; an error
    is logged and the others still run. When a plugin's ``startup`` raised, the plugins
    whose ``startup`` had returned are shut down; it and those after it are not."""


# --------------------------------------------------------------------------------------------
# A task's path: may be async.
# --------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def schedule_endpoint(
    task: Task, endpoints: Sequence[EndpointState], workflow: Workflow, backlog: int
) -> EndpointState | None:
    """Pick the ComfyUI endpoint for ``task`` among ``endpoints`` (all known endpoints, each
    with status, ComfyUI queue, our in-flight count, free slots and node classes).

    ``backlog`` is how many tasks wait for an endpoint, ``task`` included (1: it is the last
    one), so a scheduler can hold the tail of a batch back for a faster endpoint instead of
    starting it on a slow one. Like every hook argument, an implementation may leave it out.

    First result wins. None means "no opinion": the next implementation is asked; when every
    one returns None the task stays queued and is offered again when a slot frees up.
    Core ignores a choice that is not ``up``, has no free slot, or lacks one of
    ``workflow.node_classes``. Built-in: ``least_queue`` (trylast).
    """


@hookspec(firstresult=True)
def build_prompt(
    workflow: Workflow, params: Mapping[str, Any], task: Task, endpoint: EndpointState
) -> dict[str, Any] | None:
    """Turn validated ``params`` into the API-format prompt to POST to ``endpoint``.

    ``params`` already hold the uploaded names of image inputs. First result wins; return
    None for workflows that are not yours. Raising fails the task with BUILD_PROMPT_ERROR.
    Built-in: ``spec_builder`` (trylast), which applies the workflow's parameter spec.
    """


@hookspec(firstresult=True)
def store(artifact: Artifact, task: Task) -> StoredOutput | None:
    """Persist one output file. Stream ``artifact.chunks()``; never read it whole.

    First result wins; return None when you are not configured (the next store is asked).
    Raising sends the file to the fallback folder and gives the task error code 2.
    Built-ins: ``local_storage`` (trylast, the embedded default).
    """


@hookspec(firstresult=True)
def output_url(output: OutputRef) -> str | None:
    """Return a URL where a client can fetch a stored output, made afresh on every call (so a
    presigned link never stays expired). First result wins; None means "not mine"."""


@hookspec
def on_task_event(task: Task, event: TaskEvent) -> None:
    """The task moved one step along accepted -> queued -> dispatched -> running -> final.
    All implementations; errors are logged and never stop the task. Metrics and streams
    listen here (the task store has already persisted the step)."""


@hookspec
def on_progress(task: Task, progress: TaskProgress) -> None:
    """ComfyUI reported progress on the running ``task`` (a node started, or a counting node
    advanced). All implementations, isolated; may be called many times a second, so keep it
    cheap and throttle anything that leaves the process. Only called when implemented."""


@hookspec
def on_result(task: Task, result: TaskResult) -> None:
    """The task reached a final state and its record is saved. All implementations, each
    isolated: an error is logged and the others still run. Metrics and cleanup listen here."""


@hookspec
def notify(task: Task, result: TaskResult) -> None:
    """Tell the client the task ended; runs after ``on_result``. All implementations, each
    isolated. Must not hold the engine up: hand long deliveries to a background task.
    Raise when the message could not even be handed on (its record could not be written):
    the end then counts as not announced, and ``on_result`` and ``notify`` run once more
    with ``result.replayed`` set, after REPLICA_TIMEOUT; skip a replay you already handled.
    Built-in: ``webhook``."""
