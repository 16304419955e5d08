"""A protocol-faithful ComfyUI 0.3.64 server for tests, benchmarks and demos.

`ComfyUIEmulator` speaks ComfyUI's HTTP and websocket protocol over real sockets with aiohttp
(the library ComfyUI itself uses, so status lines, empty bodies, 500 pages and close behaviour
are the same), executes a handful of model-free nodes with Pillow, and adds fault injection
(failures, hangs, dropped websockets, kill/restart). See docs/emulator.md.

The observable behaviour follows the recordings in the comfyui-protocol folder; where they do
not say, it follows ComfyUI's server.py/execution.py: one worker executes one prompt at a time,
messages go through one publisher queue, the output cache keeps only the node signatures of the
latest prompt, and history is written before the final `executing {node: null}`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import heapq
import io
import json
import mimetypes
import os
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from PIL import Image

from .emulator_nodes import (
    NODE_CLASSES,
    OBJECT_INFO,
    Folders,
    NodeContext,
    NodeInterrupted,
    NodeResult,
    describe_value,
    input_image_names,
)
from .emulator_validation import PromptValidator, full_type_name

MAX_UPLOAD_SIZE = 100 * 1024 * 1024
SERVER_FEATURES = {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD_SIZE}
MAX_HISTORY_SIZE = 10_000
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
# /view never lets a browser render these inline.
_DOWNLOAD_ONLY_TYPES = {
    "text/html",
    "text/html-sandboxed",
    "application/xhtml+xml",
    "text/javascript",
    "text/css",
}
DEFAULT_MEMORY_LIMIT = 8 * 1024**3
PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA = 1, 4
PNG_FORMAT = 2

QueueItem = tuple[Any, str, dict[str, Any], dict[str, Any], list[str]]
Json = dict[str, Any]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int | float)
    )


def _hashable(value: Any) -> Any:
    """Cache-key form of an input value; anything unknown never matches (like ComfyUI)."""
    if isinstance(value, int | float | str | bool | type(None)):
        return value
    if isinstance(value, Mapping):
        return frozenset((k, _hashable(v)) for k, v in sorted(value.items()))
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    return object()


class InjectedFailure(Exception):
    """The exception `fail_next` raises; reported with the type name the test asked for."""

    def __init__(self, message: str, type_name: str, class_type: str | None = None) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.class_type = class_type
        """Only a prompt holding a node of this class takes it, and fails at that node."""


class _ExecutionList:
    """Which node runs next: ComfyUI's topological dissolve, output nodes first."""

    def __init__(self, prompt: Json, is_cached: Callable[[str], bool]) -> None:
        self._prompt = prompt
        self._is_cached = is_cached
        self._pending: dict[str, None] = {}
        self._block_count: dict[str, int] = {}
        self._blocking: dict[str, dict[str, None]] = {}

    def add_node(self, node_id: str) -> None:
        stack, links = [node_id], []
        while stack:
            current = stack.pop()
            if current in self._pending:
                continue
            self._pending[current] = None
            self._block_count[current] = 0
            self._blocking[current] = {}
            for value in self._prompt[current]["inputs"].values():
                if _is_link(value) and not self._is_cached(value[0]):
                    stack.append(value[0])
                    links.append((value[0], current))
        for source, target in links:
            if self._is_cached(source):
                continue
            self.add_node(source)
            if target not in self._blocking[source]:
                self._blocking[source][target] = None
                self._block_count[target] += 1

    def __bool__(self) -> bool:
        return bool(self._pending)

    def next_node(self) -> str:
        ready = [n for n in self._pending if self._block_count[n] == 0]
        rings = [
            lambda n: self._is_output(n),
            lambda n: any(self._is_output(b) for b in self._blocking[n]),
            lambda n: any(self._is_output(c) for b in self._blocking[n] for c in self._blocking[b]),
        ]
        for ring in rings:
            for node_id in ready:
                if ring(node_id):
                    return node_id
        return ready[0]

    def complete(self, node_id: str) -> None:
        del self._pending[node_id]
        for blocked in self._blocking.pop(node_id):
            self._block_count[blocked] -= 1

    def _is_output(self, node_id: str) -> bool:
        return bool(OBJECT_INFO[self._prompt[node_id]["class_type"]]["output_node"])


class _Progress:
    """The per-prompt node progress registry behind `progress_state` messages."""

    def __init__(self, run: _PromptRun) -> None:
        self._run = run
        self._nodes: dict[str, Json] = {}

    def start(self, node_id: str) -> None:
        self._set(node_id, state="running", value=0.0, max=1.0)

    def update(self, node_id: str, value: int, maximum: int) -> None:
        self._set(node_id, state="running", value=value, max=maximum)

    def finish(self, node_id: str) -> None:
        entry = self._entry(node_id)
        self._set(node_id, state="finished", value=entry["max"])

    def _entry(self, node_id: str) -> Json:
        return self._nodes.setdefault(node_id, {"value": 0, "max": 1, "state": "pending"})

    def _set(self, node_id: str, **changes: Any) -> None:
        self._entry(node_id).update(changes)
        prompt_id = self._run.prompt_id
        active = {
            nid: {
                "value": entry["value"],
                "max": entry["max"],
                "state": entry["state"],
                "node_id": nid,
                "prompt_id": prompt_id,
                "display_node_id": nid,
                "parent_node_id": None,
                "real_node_id": nid,
            }
            for nid, entry in self._nodes.items()
            if entry["state"] != "pending"
        }
        self._run.server.send(
            "progress_state", {"prompt_id": prompt_id, "nodes": active}, self._run.client_id
        )


class _PromptRun:
    """One execution of a queued prompt (ComfyUI's PromptExecutor.execute_async)."""

    def __init__(self, server: _Server, item: QueueItem) -> None:
        self.server = server
        self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs = item
        self.client_id: str | None = self.extra_data.get("client_id")
        self.messages: list[tuple[str, Json]] = []
        self.success = True
        self.history_result: Json = {"outputs": {}, "meta": {}}
        self._progress = _Progress(self)
        self._executed: set[str] = set()
        self._keys: dict[str, Any] = {}
        self._failure = server.emulator._take_failure(self.prompt)

    async def execute(self) -> None:
        server = self.server
        server.interrupt_requested = False
        server.client_id = self.client_id
        self._add_message("execution_start", {"prompt_id": self.prompt_id})
        self._keys = {node_id: await self._cache_key(node_id) for node_id in self.prompt}
        server.prune_caches(self.prompt, self._keys, keep=self._failure is None)
        cached = [n for n in self.prompt if self._keys[n] in server.output_cache]
        self._add_message("execution_cached", {"nodes": cached, "prompt_id": self.prompt_id})
        schedule = _ExecutionList(self.prompt, lambda n: self._keys[n] in server.output_cache)
        for output in self.outputs:
            schedule.add_node(output)
        while schedule:
            node_id = schedule.next_node()
            failure = await self._execute_node(node_id)
            if failure is not None:
                self.success = False
                self._report_failure(node_id, failure)
                break
            schedule.complete(node_id)
        else:
            self._add_message("execution_success", {"prompt_id": self.prompt_id})
        for node_id in self.prompt:
            ui = server.ui_cache.get(self._keys[node_id])
            if ui is not None:
                self.history_result["outputs"][node_id] = ui["output"]
                self.history_result["meta"][node_id] = ui["meta"]
        server.last_node_id = None

    def _add_message(self, event: str, data: Json, broadcast: bool = False) -> None:
        data = {**data, "timestamp": _now_ms()}
        self.messages.append((event, data))
        if self.client_id is not None or broadcast:
            self.server.send(event, data, self.client_id)

    async def _cache_key(self, node_id: str) -> Any:
        """ComfyUI's input signature: the node and its ordered ancestry, without node ids."""
        order: dict[str, int] = {}
        ancestors: list[str] = []

        def visit(current: str) -> None:
            inputs = self.prompt[current]["inputs"]
            for name in sorted(inputs):
                value = inputs[name]
                if _is_link(value) and value[0] not in order and value[0] in self.prompt:
                    order[value[0]] = len(ancestors)
                    ancestors.append(value[0])
                    visit(value[0])

        visit(node_id)
        signature = []
        for current in (node_id, *ancestors):
            node = self.prompt[current]
            node_class = NODE_CLASSES[node["class_type"]]
            changed: Any = False
            if node_class.is_changed is not None:
                try:
                    changed = await asyncio.to_thread(
                        node_class.is_changed, node["inputs"], self.server.emulator.folders
                    )
                except Exception:
                    changed = float("nan")
            parts: list[Any] = [node["class_type"], changed]
            for name in sorted(node["inputs"]):
                value = node["inputs"][name]
                if _is_link(value):
                    parts.append((name, ("ANCESTOR", order.get(value[0]), value[1])))
                else:
                    parts.append((name, _hashable(value)))
            signature.append(tuple(parts))
        return tuple(signature)

    async def _execute_node(self, node_id: str) -> tuple[Exception, Json] | None:
        """Run or replay one node; a failure comes back with the inputs it was given."""
        server = self.server
        node = self.prompt[node_id]
        class_type = node["class_type"]
        key = self._keys[node_id]
        if key in server.output_cache:
            if self.client_id is not None:
                ui = server.ui_cache.get(key) or {}
                self._send_executed(node_id, ui.get("output"))
            self._progress.finish(node_id)
            return None
        self._progress.start(node_id)
        inputs = self._resolve_inputs(node)
        if self.client_id is not None:
            server.last_node_id = node_id
            server.send(
                "executing",
                {"node": node_id, "display_node": node_id, "prompt_id": self.prompt_id},
                self.client_id,
            )
        try:
            result = await self._run_node(node_id, class_type, inputs)
        except Exception as ex:
            return ex, inputs
        if result.ui:
            server.ui_cache[key] = {
                "meta": {
                    "node_id": node_id,
                    "display_node": node_id,
                    "parent_node": None,
                    "real_node_id": node_id,
                },
                "output": result.ui,
            }
            if self.client_id is not None:
                self._send_executed(node_id, result.ui)
        server.output_cache[key] = result.outputs
        self._progress.finish(node_id)
        self._executed.add(node_id)
        return None

    async def _run_node(self, node_id: str, class_type: str, inputs: Json) -> NodeResult:
        server = self.server
        emulator = server.emulator
        server.raise_if_interrupted()
        if self._failure is not None and self._failure.class_type in (None, class_type):
            failure, self._failure = self._failure, None
            raise failure
        while emulator.hanging and not server.interrupt_requested:
            server.release.clear()
            await server.release.wait()
        server.raise_if_interrupted()
        delay = emulator.node_times.get(class_type, emulator.node_time)
        if delay > 0:
            await asyncio.sleep(delay)
        context = NodeContext(
            node_id=node_id,
            folders=emulator.folders,
            prompt=self.prompt,
            extra_data=self.extra_data,
            state=server.node_state.setdefault((node_id, class_type), {}),
            progress=self._progress_hook(node_id),
            memory_limit=emulator.memory_limit,
        )
        node_inputs = {k: v for k, v in inputs.items() if k not in ("prompt", "extra_pnginfo")}
        return await asyncio.to_thread(NODE_CLASSES[class_type].run, context, node_inputs)

    def _resolve_inputs(self, node: Json) -> Json:
        info = OBJECT_INFO[node["class_type"]]
        values: Json = {}
        for category in ("required", "optional"):
            for name in info["input"].get(category, {}):
                if name in node["inputs"]:
                    value = node["inputs"][name]
                    if _is_link(value):
                        source_key = self._keys[value[0]]
                        value = self.server.output_cache[source_key][int(value[1])]
                    values[name] = value
        hidden = info["input"].get("hidden", {})
        if "prompt" in hidden:
            values["prompt"] = self.prompt
        if "extra_pnginfo" in hidden:
            values["extra_pnginfo"] = self.extra_data.get("extra_pnginfo")
        return values

    def _progress_hook(self, node_id: str) -> Callable[[int, int, bytes | None], None]:
        """Progress callback for node threads; like ComfyUI's hook it also honours interrupts."""
        loop = asyncio.get_running_loop()

        def hook(value: int, total: int, png: bytes | None) -> None:
            self.server.raise_if_interrupted()
            loop.call_soon_threadsafe(self._on_progress, node_id, value, total, png)

        return hook

    def _on_progress(self, node_id: str, value: int, total: int, png: bytes | None) -> None:
        server = self.server
        self._progress.update(node_id, value, total)
        with_metadata = server.supports_preview_metadata(self.client_id)
        if png is not None and with_metadata:
            metadata = json.dumps(
                {
                    "node_id": node_id,
                    "prompt_id": self.prompt_id,
                    "display_node_id": node_id,
                    "parent_node_id": None,
                    "real_node_id": node_id,
                    "image_type": "image/png",
                }
            ).encode()
            header = struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(metadata))
            server.send_binary(header + metadata + png, self.client_id)
        progress = {"value": value, "max": total, "prompt_id": self.prompt_id, "node": node_id}
        server.send("progress", progress, self.client_id)
        if png is not None and not with_metadata:
            server.send_binary(struct.pack(">II", PREVIEW_IMAGE, PNG_FORMAT) + png, self.client_id)

    def _send_executed(self, node_id: str, output: Any) -> None:
        data = {"node": node_id, "display_node": node_id, "output": output}
        self.server.send("executed", {**data, "prompt_id": self.prompt_id}, self.client_id)

    def _report_failure(self, node_id: str, failure: tuple[Exception, Json]) -> None:
        ex, inputs = failure
        class_type = self.prompt[node_id]["class_type"]
        base = {
            "prompt_id": self.prompt_id,
            "node_id": node_id,
            "node_type": class_type,
            "executed": list(self._executed),
        }
        if isinstance(ex, NodeInterrupted):
            self._add_message("execution_interrupted", base, broadcast=True)
            return
        type_name = getattr(ex, "type_name", None) or full_type_name(type(ex))
        error = {
            **base,
            "exception_message": f"{ex}\n",
            "exception_type": type_name,
            "traceback": traceback.format_tb(ex.__traceback__),
            "current_inputs": {name: [describe_value(v)] for name, v in inputs.items()},
            "current_outputs": list(self.prompt),
        }
        self._add_message("execution_error", error)


class _Server:
    """One ComfyUI process: sockets, queue, history and caches. `kill()` throws it away."""

    def __init__(self, emulator: ComfyUIEmulator) -> None:
        self.emulator = emulator
        self.number = 0
        self.queue: list[QueueItem] = []
        self.running: dict[int, QueueItem] = {}
        self.task_counter = 0
        self.history: dict[str, Json] = {}
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.sockets_metadata: dict[str, Json] = {}
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.interrupt_requested = False
        self.release = asyncio.Event()
        self.output_cache: dict[Any, tuple[Any, ...]] = {}
        self.ui_cache: dict[Any, Json] = {}
        self.node_state: dict[tuple[str, str], Json] = {}
        self._outbox: asyncio.Queue[tuple[str | int, Any, str | None]] = asyncio.Queue()
        self._wakeup = asyncio.Event()
        self._ws_transports: set[asyncio.BaseTransport] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self._validator = PromptValidator(emulator.node_classes, emulator.folders)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        requests = self.emulator.requests

        @web.middleware
        async def count(request: web.Request, handler: Any) -> web.StreamResponse:
            requests[f"{request.method} {request.match_info.route.resource.canonical}"] += 1
            return await handler(request)

        app = web.Application(client_max_size=MAX_UPLOAD_SIZE, middlewares=[count])
        routes = self._routes()
        app.add_routes([web.route(m, "/api" + p, h) for m, p, h in routes])
        app.add_routes([web.route(m, p, h) for m, p, h in routes])
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self._tasks = [asyncio.create_task(self._work()), asyncio.create_task(self._publish())]
        return int(self._runner.addresses[0][1])

    async def kill(self) -> None:
        """Vanish like a SIGKILLed process: no close frames, no final messages."""
        runner = self._runner
        if runner is None:
            return
        self._runner = None
        for site in list(runner.sites):
            await site.stop()
        if runner.server is not None:
            for handler in runner.server.connections:
                if handler.transport is not None:
                    handler.transport.abort()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runner.cleanup()

    def drop_websockets(self) -> None:
        for transport in list(self._ws_transports):
            transport.abort()

    # -- messaging ---------------------------------------------------------------------------

    def send(self, event: str, data: Any, sid: str | None = None) -> None:
        self._outbox.put_nowait((event, data, sid))

    def send_binary(self, frame: bytes, sid: str | None) -> None:
        self._outbox.put_nowait((PREVIEW_IMAGE, frame, sid))

    def queue_info(self) -> Json:
        return {"exec_info": {"queue_remaining": len(self.queue) + len(self.running)}}

    def queue_updated(self) -> None:
        self.send("status", {"status": self.queue_info()})

    def supports_preview_metadata(self, sid: str | None) -> bool:
        flags = self.sockets_metadata.get(sid or "", {}).get("feature_flags", {})
        return flags.get("supports_preview_metadata", False) is True

    async def _publish(self) -> None:
        """Send queued messages in order to whoever holds the clientId at sending time."""
        while True:
            event, data, sid = await self._outbox.get()
            if isinstance(data, bytes):
                payload: str | bytes = data
            else:
                payload = json.dumps({"type": event, "data": data})
            if sid is None:
                targets = list(self.sockets.values())
            else:
                socket = self.sockets.get(sid)
                targets = [socket] if socket is not None else []
            for ws in targets:
                await _send_quietly(ws, payload)

    # -- queue and execution -----------------------------------------------------------------

    def put(self, item: QueueItem) -> None:
        heapq.heappush(self.queue, item)
        self.queue_updated()
        self._wakeup.set()

    def wipe_queue(self) -> None:
        self.queue = []
        self.queue_updated()

    def delete_queue_item(self, prompt_id: str) -> None:
        for index, item in enumerate(self.queue):
            if item[1] == prompt_id:
                if len(self.queue) == 1:
                    self.wipe_queue()
                else:
                    self.queue.pop(index)
                    heapq.heapify(self.queue)
                self.queue_updated()
                return

    def interrupt(self) -> None:
        self.interrupt_requested = True
        self.release.set()

    def raise_if_interrupted(self) -> None:
        if self.interrupt_requested:
            self.interrupt_requested = False
            raise NodeInterrupted

    def prune_caches(self, prompt: Json, keys: Mapping[str, Any], keep: bool) -> None:
        """ComfyUI's classic cache keeps only what the current prompt uses."""
        wanted = set(keys.values()) if keep and self.emulator.cache else set()
        for cache in (self.output_cache, self.ui_cache):
            for key in [k for k in cache if k not in wanted]:
                del cache[key]
        used = {(node_id, node["class_type"]) for node_id, node in prompt.items()}
        self.node_state = {k: v for k, v in self.node_state.items() if k in used}

    async def _work(self) -> None:
        while True:
            while not self.queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            item = heapq.heappop(self.queue)
            item_id = self.task_counter
            self.task_counter += 1
            self.running[item_id] = copy.deepcopy(item)
            self.queue_updated()
            run = _PromptRun(self, item)
            await run.execute()
            self._task_done(item_id, run)
            if run.client_id is not None:
                self.send("executing", {"node": None, "prompt_id": run.prompt_id}, run.client_id)

    def _task_done(self, item_id: int, run: _PromptRun) -> None:
        prompt = self.running.pop(item_id)
        if len(self.history) > MAX_HISTORY_SIZE:
            self.history.pop(next(iter(self.history)))
        for key in SENSITIVE_EXTRA_DATA_KEYS:
            prompt[3].pop(key, None)
        status = {
            "status_str": "success" if run.success else "error",
            "completed": run.success,
            "messages": [list(message) for message in run.messages],
        }
        self.history[prompt[1]] = {"prompt": prompt, "outputs": {}, "status": status}
        self.history[prompt[1]].update(run.history_result)
        self.queue_updated()

    # -- HTTP --------------------------------------------------------------------------------

    def _routes(self) -> list[tuple[str, str, Callable[[web.Request], Any]]]:
        return [
            ("GET", "/ws", self._websocket),
            ("POST", "/prompt", self._post_prompt),
            ("GET", "/prompt", self._get_prompt),
            ("GET", "/queue", self._get_queue),
            ("POST", "/queue", self._post_queue),
            ("POST", "/interrupt", self._post_interrupt),
            ("GET", "/history", self._get_history),
            ("GET", "/history/{prompt_id}", self._get_history_item),
            ("POST", "/history", self._post_history),
            ("GET", "/view", self._view),
            ("POST", "/upload/image", self._upload_image),
            ("GET", "/system_stats", self._system_stats),
            ("GET", "/object_info", self._object_info),
            ("GET", "/object_info/{node_class}", self._object_info_node),
            ("GET", "/features", self._features),
        ]

    async def _post_prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.emulator.prompts_received.append(copy.deepcopy(body))
        if "number" in body:
            number: Any = float(body["number"])
        else:
            number = self.number
            if body.get("front"):
                number = -number
            self.number += 1
        if "prompt" not in body:
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        prompt = body["prompt"]
        prompt_id = str(body.get("prompt_id", uuid.uuid4()))
        valid, error, outputs, node_errors = self._validator.validate(
            prompt, body.get("partial_execution_targets")
        )
        extra_data = body.get("extra_data", {})
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        if not valid:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        self.put((number, prompt_id, prompt, extra_data, outputs))
        return web.json_response(
            {"prompt_id": prompt_id, "number": number, "node_errors": node_errors}
        )

    async def _get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self.queue_info())

    async def _get_queue(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"queue_running": list(self.running.values()), "queue_pending": list(self.queue)}
        )

    async def _post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.wipe_queue()
        for prompt_id in body.get("delete", ()):
            self.delete_queue_item(prompt_id)
        return web.Response(status=200)

    async def _post_interrupt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = {}
        prompt_id = body.get("prompt_id")
        if not prompt_id or any(item[1] == prompt_id for item in self.running.values()):
            self.interrupt()
        return web.Response(status=200)

    async def _get_history(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        max_items = int(query["max_items"]) if "max_items" in query else None
        offset = int(query["offset"]) if "offset" in query else -1
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        selected: Json = {}
        for index, (prompt_id, entry) in enumerate(self.history.items()):
            if index >= offset:
                selected[prompt_id] = entry
                if max_items is not None and len(selected) >= max_items:
                    break
        return web.json_response(selected)

    async def _get_history_item(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry is not None else {})

    async def _post_history(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.history = {}
        for prompt_id in body.get("delete", ()):
            self.history.pop(prompt_id, None)
        return web.Response(status=200)

    async def _view(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        resolved = _resolve_view_path(self.emulator.folders, query)
        if isinstance(resolved, int):
            return web.Response(status=resolved)
        filename = os.path.basename(resolved)
        disposition = {"Content-Disposition": f'filename="{filename}"'}
        if "preview" in query or query.get("channel", "rgba") in ("rgb", "a"):
            body, content_type = await asyncio.to_thread(_reencode, resolved, dict(query))
            return web.Response(body=body, content_type=content_type, headers=disposition)
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if content_type in _DOWNLOAD_ONLY_TYPES:
            content_type = "application/octet-stream"
        return web.FileResponse(resolved, headers={**disposition, "Content-Type": content_type})

    async def _upload_image(self, request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        if not image or not getattr(image, "file", None):
            return web.Response(status=400)
        stored = await asyncio.to_thread(
            _store_upload, self.emulator.folders, image, post.get("type"), post
        )
        if stored is None:
            return web.Response(status=400)
        return web.json_response(stored)

    async def _system_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.emulator.system_stats())

    async def _features(self, request: web.Request) -> web.Response:
        return web.json_response(dict(SERVER_FEATURES))

    async def _object_info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {name: self._node_info(name) for name in self.emulator.node_classes}
        )

    async def _object_info_node(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        known = name in self.emulator.node_classes
        return web.json_response({name: self._node_info(name)} if known else {})

    def _node_info(self, name: str) -> Json:
        info = OBJECT_INFO[name]
        if name != "LoadImage":
            return info
        info = copy.deepcopy(info)
        info["input"]["required"]["image"][0] = input_image_names(self.emulator.folders.input)
        return info

    # -- websocket ---------------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "")
        if sid:
            self.sockets.pop(sid, None)
        else:
            sid = uuid.uuid4().hex
        self.sockets[sid] = ws
        self.sockets_metadata[sid] = {"feature_flags": {}}
        transport = request.transport
        if transport is not None:
            self._ws_transports.add(transport)
        try:
            status = {"type": "status", "data": {"status": self.queue_info(), "sid": sid}}
            await _send_quietly(ws, json.dumps(status))
            if self.client_id == sid and self.last_node_id is not None:
                executing = {"type": "executing", "data": {"node": self.last_node_id}}
                await _send_quietly(ws, json.dumps(executing))
            first_message = True
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                with contextlib.suppress(Exception):
                    data = json.loads(message.data)
                    if first_message and data.get("type") == "feature_flags":
                        self.sockets_metadata[sid]["feature_flags"] = data.get("data", {})
                        reply = {"type": "feature_flags", "data": dict(SERVER_FEATURES)}
                        await _send_quietly(ws, json.dumps(reply))
                    first_message = False
        finally:
            # ComfyUI removes the entry by clientId, even when a newer socket now owns it.
            self.sockets.pop(sid, None)
            self.sockets_metadata.pop(sid, None)
            if transport is not None:
                self._ws_transports.discard(transport)
        return ws


def _resolve_view_path(folders: Folders, query: Mapping[str, str]) -> str | int:
    """The file GET /view serves, or the status ComfyUI answers instead (400/403/404)."""
    if "filename" not in query:
        return 404
    filename = query["filename"]
    folder: str | None = None
    for kind in ("output", "input", "temp"):
        if filename.endswith(f"[{kind}]"):
            filename, folder = filename[: -len(kind) - 3], folders.by_type(kind)
            break
    if not filename or filename[0] == "/" or ".." in filename:
        return 400
    if folder is None:
        folder = folders.by_type(query.get("type", "output"))
    if folder is None:
        return 400
    if "subfolder" in query:
        full = os.path.join(folder, query["subfolder"])
        if os.path.commonpath((os.path.abspath(full), folder)) != folder:
            return 403
        folder = full
    path = os.path.join(folder, os.path.basename(filename))
    return path if os.path.isfile(path) else 404


async def _send_quietly(ws: web.WebSocketResponse, payload: str | bytes) -> None:
    """A vanished peer must not break the publisher (ComfyUI logs and carries on)."""
    with contextlib.suppress(ConnectionError, RuntimeError):
        if isinstance(payload, bytes):
            await ws.send_bytes(payload)
        else:
            await ws.send_str(payload)


def _reencode(path: str, query: Mapping[str, str]) -> tuple[bytes, str]:
    """GET /view with `preview=` or `channel=`: re-encode the stored image like ComfyUI."""
    buffer = io.BytesIO()
    with Image.open(path) as img:
        channel = query.get("channel", "")
        if "preview" in query:
            preview = query["preview"].split(";")
            image_format = preview[0]
            if image_format not in ("webp", "jpeg") or "a" in channel:
                image_format = "webp"
            quality = int(preview[-1]) if preview[-1].isdigit() else 90
            converted = img.convert("RGB") if image_format == "jpeg" or channel == "rgb" else img
            converted.save(buffer, format=image_format, quality=quality)
            return buffer.getvalue(), f"image/{image_format}"
        if channel == "rgb":
            rgb = Image.merge("RGB", img.split()[:3]) if img.mode == "RGBA" else img.convert("RGB")
            rgb.save(buffer, format="PNG")
        else:
            alpha = img.split()[3] if img.mode == "RGBA" else Image.new("L", img.size, 255)
            alpha_image = Image.new("RGBA", img.size)
            alpha_image.putalpha(alpha)
            alpha_image.save(buffer, format="PNG")
    return buffer.getvalue(), "image/png"


def _store_upload(
    folders: Folders, image: Any, upload_type: Any, post: Mapping[str, Any]
) -> Json | None:
    """POST /upload/image: dedupe identical bytes, rename collisions to "name (1).ext"."""
    kind = upload_type or "input"
    folder = folders.by_type(kind)
    if folder is None:  # ComfyUI fails with an UnboundLocalError: a 500
        raise ValueError(f"unknown upload type {kind!r}")
    filename = image.filename
    if not filename:
        return None
    subfolder = post.get("subfolder", "")
    target_folder = os.path.join(folder, os.path.normpath(subfolder))
    path = os.path.abspath(os.path.join(target_folder, filename))
    if os.path.commonpath((folder, path)) != folder:
        return None
    os.makedirs(target_folder, exist_ok=True)
    content = image.file.read()
    stem, extension = os.path.splitext(filename)
    duplicate = False
    if post.get("overwrite") not in ("true", "1"):
        counter = 1
        while os.path.exists(path):
            if Path(path).read_bytes() == content:
                duplicate = True
                break
            filename = f"{stem} ({counter}){extension}"
            path = os.path.join(target_folder, filename)
            counter += 1
    if not duplicate:
        Path(path).write_bytes(content)
    return {"name": filename, "subfolder": subfolder, "type": kind}


class ComfyUIEmulator:
    """A ComfyUI server on 127.0.0.1 that tests can configure, break and restart.

    Use `await emu.start()` / `await emu.stop()` or `async with ComfyUIEmulator() as emu:`.
    Control methods (`fail_next`, `hang`, `interrupt`...) must be called on the emulator's
    event loop; `EmulatorThread` wraps them for other threads.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        node_time: float = 0.0,
        node_times: Mapping[str, float] | None = None,
        cache: bool = True,
        object_info_exclude: Iterable[str] = (),
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
    ) -> None:
        self.host = host
        self.port = port
        self.node_time = node_time
        self.node_times: dict[str, float] = dict(node_times or {})
        self.cache = cache
        self.memory_limit = memory_limit
        excluded = set(object_info_exclude)
        self.node_classes = {k: v for k, v in NODE_CLASSES.items() if k not in excluded}
        self._own_base_dir = base_dir is None
        root = Path(tempfile.mkdtemp(prefix="comfyui-emulator-") if base_dir is None else base_dir)
        root = root.resolve()
        self.folders = Folders(
            input=str(root / "input"), output=str(root / "output"), temp=str(root / "temp")
        )
        self.base_dir = root
        self.prompts_received: list[Json] = []
        self.requests: collections.Counter[str] = collections.Counter()
        """Requests served, by method and route (`GET /history/{prompt_id}`): test-side
        bookkeeping, as ComfyUI keeps none."""
        self.hanging = False
        self._failures: list[InjectedFailure] = []
        self._server: _Server | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> ComfyUIEmulator:
        """Listen (on a free port if `port` was 0). Temp is wiped, as at ComfyUI's start."""
        if self._server is not None:
            raise RuntimeError("emulator already running")
        shutil.rmtree(self.folders.temp, ignore_errors=True)
        for folder in (self.folders.input, self.folders.output, self.folders.temp):
            os.makedirs(folder, exist_ok=True)
        server = _Server(self)
        self.port = await server.start(self.host, self.port)
        self._server = server
        return self

    async def stop(self) -> None:
        """Shut down (connections dropped like ComfyUI exiting) and delete an own temp base_dir."""
        await self.kill()
        if self._own_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    async def kill(self) -> None:
        """Die like SIGKILL: sockets drop without close frames (clients see 1006), new connects
        are refused, queue/history/running prompt are lost. The port stays reserved for
        `restart()`."""
        server, self._server = self._server, None
        if server is not None:
            await server.kill()

    async def restart(self) -> None:
        """Come back on the same port as a fresh process: empty queue and history, `number` 0,
        cold caches, temp wiped; input and output files are kept."""
        await self.kill()
        await self.start()

    async def __aenter__(self) -> ComfyUIEmulator:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- fault injection ---------------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        message: str = "Emulated failure",
        exception_type: str = "RuntimeError",
        *,
        class_type: str | None = None,
    ) -> None:
        """The next `count` prompts that start executing fail at their first node, cache or
        not, with an `execution_error` carrying this message and exception type name. With
        `class_type`, only prompts holding a node of that class count, and each fails at
        the first such node it reaches."""
        self._failures.extend(
            InjectedFailure(message, exception_type, class_type) for _ in range(count)
        )

    def clear_failures(self) -> None:
        """Forget the failures `fail_next` queued that no prompt has taken yet."""
        self._failures.clear()

    def hang(self, enabled: bool = True) -> None:
        """While enabled, a prompt blocks before running its next node until it is interrupted
        (the `execution_interrupted` then names that node) or `hang(False)` is called."""
        self.hanging = enabled
        if not enabled and self._server is not None:
            self._server.release.set()

    def interrupt(self) -> None:
        """Same as a global POST /interrupt."""
        self._require_server().interrupt()

    def drop_websockets(self) -> None:
        """Abort every websocket's TCP connection (clients see 1006); HTTP keeps working."""
        self._require_server().drop_websockets()

    def _take_failure(self, prompt: Json) -> InjectedFailure | None:
        classes = {node.get("class_type") for node in prompt.values()}
        for index, failure in enumerate(self._failures):
            if failure.class_type is None or failure.class_type in classes:
                return self._failures.pop(index)
        return None

    # -- inspection --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def input_dir(self) -> Path:
        return Path(self.folders.input)

    @property
    def output_dir(self) -> Path:
        return Path(self.folders.output)

    @property
    def temp_dir(self) -> Path:
        return Path(self.folders.temp)

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def history(self) -> dict[str, Json]:
        """The live history (empty while killed)."""
        return self._server.history if self._server is not None else {}

    @property
    def queue_pending(self) -> list[QueueItem]:
        return sorted(self._server.queue) if self._server is not None else []

    @property
    def queue_running(self) -> list[QueueItem]:
        return list(self._server.running.values()) if self._server is not None else []

    @property
    def client_ids(self) -> list[str]:
        """clientIds that currently receive messages."""
        return list(self._server.sockets) if self._server is not None else []

    @property
    def compressed_client_ids(self) -> list[str]:
        """clientIds whose websocket negotiated permessage-deflate (aiohttp, as ComfyUI
        runs it, deflates every message of such a connection)."""
        sockets = self._server.sockets if self._server is not None else {}
        return [client_id for client_id, ws in sockets.items() if ws.compress]

    def system_stats(self) -> Json:
        ram_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        ram_free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        argv = ["main.py", "--cpu", "--listen", self.host, "--port", str(self.port)]
        argv += ["--output-directory", self.folders.output, "--input-directory", self.folders.input]
        return {
            "system": {
                "os": os.name,
                "ram_total": ram_total,
                "ram_free": ram_free,
                "comfyui_version": "0.3.64",
                "required_frontend_version": "1.27.10",
                "installed_templates_version": "0.1.95",
                "required_templates_version": "0.1.95",
                "python_version": sys.version,
                "pytorch_version": "2.14.1+cu130",
                "embedded_python": False,
                "argv": argv,
            },
            "devices": [
                {
                    "name": "cpu",
                    "type": "cpu",
                    "index": None,
                    "vram_total": ram_total,
                    "vram_free": ram_free,
                    "torch_vram_total": ram_total,
                    "torch_vram_free": ram_free,
                }
            ],
        }

    def _require_server(self) -> _Server:
        if self._server is None:
            raise RuntimeError("emulator is not running")
        return self._server


def run_emulator(
    host: str = "127.0.0.1",
    port: int = 8188,
    node_time: float = 0.0,
    base_dir: str | os.PathLike[str] | None = None,
    *,
    on_started: Callable[[ComfyUIEmulator], None] | None = None,
    **options: Any,
) -> None:
    """Serve until interrupted (Ctrl-C/SIGTERM); `on_started` gets the running emulator,
    e.g. to print its URL. Extra keyword options go to `ComfyUIEmulator`."""

    async def serve() -> None:
        emulator = ComfyUIEmulator(host, port, base_dir, node_time=node_time, **options)
        async with emulator:
            if on_started is not None:
                on_started(emulator)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            # Only possible in the main thread (and not on Windows); Ctrl-C works regardless.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signal.SIGTERM, stop.set)
            await stop.wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
