"""Turn engine and store data into what the templates show. Pure functions, so the rules
(what counts as a huge param, how long a stage took, which endpoint can run what) are
tested without a browser."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from comfyui_server.core import EndpointState, Task, TaskEvent, Workflow

LONG_VALUE = 200
"""Characters beyond which a param value is summarised instead of shown."""


class FleetRow(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    url: str
    status: str
    queue_remaining: int
    in_flight: int
    capacity: int
    node_classes: int | None
    """How many node classes the endpoint offers; None until /object_info is read."""
    workflows: tuple[str, ...]
    """Deployed workflows it can run (all of them while its node classes are unknown)."""
    last_error: str | None


def fleet_rows(states: Sequence[EndpointState], workflows: Iterable[Workflow]) -> list[FleetRow]:
    workflows = list(workflows)
    return [
        FleetRow(
            name=s.name,
            url=s.url,
            status=s.status,
            queue_remaining=s.queue_remaining,
            in_flight=s.in_flight,
            capacity=s.capacity,
            node_classes=len(s.node_classes) if s.node_classes is not None else None,
            workflows=tuple(w.name for w in workflows if s.can_run(w.node_classes)),
            last_error=s.last_error,
        )
        for s in states
    ]


class ParamRow(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    value: str
    summarised: bool = False
    """True when `value` describes the value instead of showing it (base64 images)."""


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def human_size(n: int | float | None) -> str:
    return "" if n is None else _size(float(n))


def summarise_value(value: Any, param_type: str | None) -> tuple[str, bool]:
    """(text, summarised): a base64 image or any long string becomes a size placeholder, so
    a page never carries megabytes of params."""
    if isinstance(value, str):
        if value.startswith(("http://", "https://")) and len(value) <= 2000:
            return value, False
        if param_type == "image" or len(value) > LONG_VALUE:
            head, sep, body = value.partition(",")
            if value.startswith("data:") and sep:
                kind = head[5:].split(";")[0] or "data"
                return f"{kind}, {_size(len(body) * 3 / 4)} (base64, not shown)", True
            if param_type == "image":
                return f"image, {_size(len(value) * 3 / 4)} (base64, not shown)", True
            return f"{value[:LONG_VALUE]}… ({len(value)} characters)", True
        return value, False
    text = msgspec.json.encode(value).decode()
    if len(text) > LONG_VALUE:
        return f"{text[:LONG_VALUE]}… ({len(text)} characters)", True
    return text, False


def param_rows(task: Task, workflow: Workflow | None) -> list[ParamRow]:
    specs = workflow.params if workflow else {}
    rows = []
    for name, value in task.params.items():
        spec = specs.get(name)
        text, summarised = summarise_value(value, spec.type if spec else None)
        rows.append(ParamRow(name=name, value=text, summarised=summarised))
    return rows


class Stage(msgspec.Struct, frozen=True, kw_only=True):
    status: str
    at: dt.datetime
    seconds: float | None
    """Time spent in this stage (until the next event, or until now while current); None
    for a final state."""
    endpoint: str | None
    detail: str | None
    offset: float = 0.0
    """Where the stage starts on the timeline bar, 0-100."""
    width: float = 0.0
    """Its share of the bar, 0-100."""
    current: bool = False


def timeline(events: Sequence[TaskEvent], now: dt.datetime, final: bool) -> list[Stage]:
    """The task's flow as stages with the time spent in each, for a list and a bar."""
    if not events:
        return []
    events = sorted(events, key=lambda e: e.at)
    start = events[0].at
    end = events[-1].at if final else max(now, events[-1].at)
    total = max((end - start).total_seconds(), 1e-9)
    stages = []
    for i, event in enumerate(events):
        last = i == len(events) - 1
        if last and final:
            until = None
        else:
            until = end if last else events[i + 1].at
        seconds = (until - event.at).total_seconds() if until else None
        stages.append(
            Stage(
                status=event.status,
                at=event.at,
                seconds=seconds,
                endpoint=event.endpoint,
                detail=event.detail,
                offset=100 * (event.at - start).total_seconds() / total,
                width=100 * (seconds or 0) / total,
                current=last and not final,
            )
        )
    return stages


class Durations(msgspec.Struct, frozen=True, kw_only=True):
    waited: float | None
    """Queued in our queue: created until dispatched (until now while waiting)."""
    ran: float | None
    """On ComfyUI: dispatched until finished (until now while there)."""
    total: float | None


def durations(task: Task, now: dt.datetime) -> Durations:
    def span(a: dt.datetime | None, b: dt.datetime | None) -> float | None:
        return (b - a).total_seconds() if a and b else None

    end = task.finished_at or (None if task.is_final else now)
    dispatched = task.dispatched_at
    return Durations(
        waited=span(task.created_at, dispatched or end),
        ran=span(dispatched, end),
        total=span(task.created_at, end),
    )


_NODE_ERROR = re.compile(r"^node (?P<node>\S+) \((?P<type>[^)]*)\): (?P<message>.*)$", re.S)


class ErrorView(msgspec.Struct, frozen=True, kw_only=True):
    message: str
    node: str | None = None
    node_type: str | None = None


def error_view(task: Task) -> ErrorView | None:
    """The error, with ComfyUI's failing node split out of the engine's message."""
    if not task.error:
        return None
    match = _NODE_ERROR.match(task.error)
    if match:
        return ErrorView(
            message=match["message"], node=match["node"], node_type=match["type"] or None
        )
    return ErrorView(message=task.error)


def output_kind(content_type: str) -> str:
    """How an output is previewed: image, video, audio, text or file."""
    major = content_type.split("/", 1)[0]
    if major in ("image", "video", "audio", "text"):
        return major
    if content_type in ("application/json", "application/xml"):
        return "text"
    return "file"


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def human_time(moment: dt.datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
