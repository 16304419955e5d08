"""One websocket per ComfyUI endpoint: its queue, its health, and when our prompts end.

The end of a prompt is `executing` with `node: null` for its prompt_id (ComfyUI writes history
just before it; `execution_success` can arrive before history is readable). Messages sent
while we are disconnected are lost, so after every reconnect, and every few seconds as a
safety net, the prompts we wait for are checked against /history and /queue.

The time from `execution_start` to that end, for the prompts that ran to success, gives the
endpoint's speed (`seconds_per_task`), which lets the scheduler weigh a slow endpoint
against a busy fast one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

import msgspec
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from ..errors import EndpointUnavailable
from ..models import EndpointState, EndpointStatus
from .client import ComfyUIClient

log = logging.getLogger(__name__)

SPEED_ALPHA = 0.3
"""Weight of the newest run in the `seconds_per_task` moving average. An endpoint's speed
changes (another client shares it, a model gets swapped in or out), and 0.3 follows a change
within about five prompts (0.7**5 = 0.17 of the old figure left), while one odd run (one
that first loads a model can take ten times as long) moves the average by less than a third
of its difference, and that fades as quickly. The first run sets the average."""

OutcomeKind = Literal["ended", "lost", "stopped"]


class Watch:
    """A prompt we sent (or are about to send) and wait for."""

    __slots__ = (
        "cached_any",
        "detail",
        "future",
        "heard_on",
        "node_order",
        "outputs",
        "prompt_id",
        "ran_a_node",
        "started_at",
        "submitted",
        "succeeded",
    )

    def __init__(self, prompt_id: str) -> None:
        self.prompt_id = prompt_id
        self.future: asyncio.Future[OutcomeKind] = asyncio.get_running_loop().create_future()
        self.submitted = False
        self.detail: dict[str, Any] | None = None
        """The execution_error / execution_interrupted data, when one arrived."""
        self.started_at: float | None = None
        """`time.monotonic()` when its `execution_start` arrived (None if none was seen)."""
        self.ran_a_node = False
        """Set by `executing` for a node: False at the end means ComfyUI served it all from
        its cache, which says nothing about how fast the endpoint runs a prompt."""
        self.node_order: tuple[str, ...] | None = None
        """The prompt's node ids in its own order (the order /history lists outputs in), set
        by whoever posts it; None for a prompt taken over from an earlier process."""
        self.heard_on: int | None = None
        """The websocket connection (`EndpointMonitor.connections`) `execution_start` came on."""
        self.outputs: dict[str, Any] = {}
        """Each node's UI output from its `executed` message (what /history lists)."""
        self.cached_any = False
        self.succeeded = False

    def heard_entry(self, connection: int) -> dict[str, Any] | None:
        """The prompt's history entry as the websocket told it, or None unless it told all:
        the run succeeded, every message came on the `connection` still open (none can have
        been missed), and no node came from ComfyUI's cache (ComfyUI before August 2024 sent
        no `executed` for a cached node, yet /history lists its outputs). Saves the GET
        /history that would otherwise follow every prompt."""
        if not self.succeeded or self.cached_any or self.heard_on != connection:
            return None
        if self.node_order is None:
            return None
        # the prompt's own order first (as /history lists them), then nodes ComfyUI added
        # while running (expanded ones, ids such as `12.0.3`)
        order = {node: i for i, node in enumerate(self.node_order)}
        ranked = sorted(self.outputs, key=lambda node: order.get(node, len(order)))
        outputs = {node: self.outputs[node] for node in ranked}
        return {"status": {"status_str": "success", "completed": True}, "outputs": outputs}

    def resolve(self, kind: OutcomeKind) -> None:
        if not self.future.done():
            self.future.set_result(kind)


class EndpointMonitor:
    def __init__(
        self,
        client: ComfyUIClient,
        *,
        capacity: int,
        on_change: Callable[[], None],
        on_started: Callable[[str], None],
        on_progress: Callable[[str, str | None, int | None, int | None], None] | None = None,
        weight: float = 1.0,
        grace_period: float = 30.0,
        reconcile_interval: float = 5.0,
        reconnect_max_delay: float = 5.0,
    ) -> None:
        self.client = client
        self.client_id = uuid.uuid4().hex
        self.capacity = capacity
        self.on_change = on_change
        self.on_started = on_started
        self.on_progress = on_progress
        self.grace_period = grace_period
        self.reconcile_interval = reconcile_interval
        self.reconnect_max_delay = reconnect_max_delay
        self.status: EndpointStatus = "connecting"
        self.queue_remaining = 0
        self.node_classes: frozenset[str] | None = None
        self.last_error: str | None = None
        self.weight = weight
        self.seconds_per_task: float | None = None
        """Moving average (`SPEED_ALPHA`) of how long our prompts ran here; see `timed`."""
        self.draining = False
        """Set when the endpoint is being removed: no new work, the rest finishes."""
        self.watches: dict[str, Watch] = {}
        self.connections = 0
        """Websocket connections made so far: the current one's number."""
        self._ws = None
        self._settle: asyncio.Task | None = None
        self.idle = asyncio.Event()
        """Set while no prompt of ours is in flight here (removal waits for it)."""
        self.idle.set()
        self._down_since: float | None = None
        self._tasks: list[asyncio.Task] = []

    # ---- state ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.client.name

    def state(self) -> EndpointState:
        return EndpointState(
            name=self.client.name,
            url=self.client.url,
            status="draining" if self.draining else self.status,
            queue_remaining=self.queue_remaining,
            in_flight=len(self.watches),
            capacity=self.capacity,
            weight=self.weight,
            node_classes=self.node_classes,
            last_error=self.last_error,
            seconds_per_task=self.seconds_per_task,
            running_for=self.running_for(),
        )

    def running_for(self) -> float:
        """Seconds since the `execution_start` of the prompt of ours running here, 0 if none.

        ComfyUI runs one prompt at a time, so of the watches that started and have not ended
        the one that started last is the one running: an earlier one ended while its end was
        lost (a reconnect) and waits for `reconcile`.
        """
        starts = [
            w.started_at
            for w in self.watches.values()
            if w.started_at is not None and not w.future.done()
        ]
        return time.monotonic() - max(starts) if starts else 0.0

    def reserve(self, prompt_id: str) -> Watch:
        """Take a slot before uploading or posting, so no finish can race the watch."""
        watch = self.watches[prompt_id] = Watch(prompt_id)
        self.idle.clear()
        return watch

    def release(self, prompt_id: str) -> None:
        if self.watches.pop(prompt_id, None) is not None:
            if not self.watches:
                self.idle.set()
            self.on_change()

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._connection_loop(), name=f"ws {self.name}"),
            asyncio.create_task(self._reconcile_loop(), name=f"reconcile {self.name}"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def _set_status(self, status: EndpointStatus, error: str | None = None) -> None:
        if error is not None:
            self.last_error = error
        if status == self.status:
            return
        self.status = status
        self._down_since = time.monotonic() if status == "down" else None
        log.info("endpoint %s is %s%s", self.name, status, f": {error}" if error else "")
        self.on_change()

    async def _connection_loop(self) -> None:
        delay = 0.05
        url = f"{self.client.ws_url}?clientId={self.client_id}"
        while True:
            try:
                async with connect(
                    url,
                    proxy=None,
                    open_timeout=5,
                    close_timeout=1,
                    ping_interval=20,
                    ping_timeout=20,
                    max_size=None,
                    # ComfyUI's aiohttp server deflates every message when offered, previews
                    # included: CPU on both ends for small JSON on a local network (measured:
                    # 14 messages per prompt, each inflated here)
                    compression=None,
                ) as ws:
                    self._ws = ws
                    self.connections += 1
                    await self._on_connected()
                    delay = 0.05
                    async for message in ws:
                        if isinstance(message, str):
                            self._handle(message)
                self._set_status("down", "websocket closed")
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, WebSocketException, EndpointUnavailable) as exc:
                self._set_status("down", f"{type(exc).__name__}: {exc}")
            self._ws = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.reconnect_max_delay)

    async def _on_connected(self) -> None:
        info = await self.client.object_info()
        self.node_classes = frozenset(info)
        self._set_status("up")
        if self.watches:  # events sent while we were away are lost: ask history
            self._settle = asyncio.create_task(self.reconcile())

    # ---- messages ---------------------------------------------------------------------

    def _handle(self, raw: str) -> None:
        try:
            message = msgspec.json.decode(raw)
            kind, data = message["type"], message.get("data") or {}
        except (msgspec.DecodeError, KeyError, TypeError):
            log.warning("endpoint %s sent an unreadable message: %.200s", self.name, raw)
            return
        if kind == "status":
            remaining = data.get("status", {}).get("exec_info", {}).get("queue_remaining")
            if isinstance(remaining, int) and remaining != self.queue_remaining:
                self.queue_remaining = remaining
                self.on_change()
            return
        watch = self.watches.get(data.get("prompt_id")) if isinstance(data, dict) else None
        if watch is None:
            return
        if kind == "executing":
            node = data.get("node")
            if node is None:
                self.timed(watch)
                watch.resolve("ended")
            else:
                watch.ran_a_node = True
                if self.on_progress is not None:
                    self.on_progress(watch.prompt_id, str(node), None, None)
        elif kind == "progress" and self.on_progress is not None:
            self.on_progress(watch.prompt_id, data.get("node"), data.get("value"), data.get("max"))
        elif kind == "executed":
            if data.get("output") is not None:
                watch.outputs[str(data.get("node"))] = data["output"]
        elif kind == "execution_start":
            watch.started_at = time.monotonic()
            watch.heard_on = self.connections
            self.on_started(watch.prompt_id)
        elif kind == "execution_cached":
            watch.cached_any = watch.cached_any or bool(data.get("nodes"))
        elif kind == "execution_success":
            watch.succeeded = True
        elif kind in ("execution_error", "execution_interrupted"):
            watch.detail = {"type": kind, **data}

    def heard_entry(self, watch: Watch) -> dict[str, Any] | None:
        """What the websocket told of `watch`'s run, if it told all (see Watch.heard_entry)."""
        return watch.heard_entry(self.connections)

    def timed(self, watch: Watch) -> None:
        """Fold the run of `watch`, which just ended, into `seconds_per_task`.

        Only a run that says how fast the endpoint works counts: one whose start and end we
        both saw on the websocket, that ran at least one node (not all from ComfyUI's
        cache), without an error or an interruption (a prompt we stop is interrupted; one
        given up as lost sends no end). Timing from the POST when the start was missed
        would count the wait behind the prompts queued before it, and a prompt taken over
        after a restart was not posted by this process at all: such runs are left out
        rather than guessed.

        One average per endpoint, whatever the workflow: the monitor does not know which
        workflow a prompt runs. With a mixed load it is the endpoint's speed on that mix,
        which still ranks endpoints that get the same mix.
        """
        if watch.started_at is None or not watch.ran_a_node or watch.detail is not None:
            return
        seconds = time.monotonic() - watch.started_at
        if self.seconds_per_task is None:
            self.seconds_per_task = seconds
        else:
            self.seconds_per_task += SPEED_ALPHA * (seconds - self.seconds_per_task)

    # ---- recovery ---------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reconcile_interval)
            if self.status == "down":
                if self._down_since and time.monotonic() - self._down_since > self.grace_period:
                    for watch in list(self.watches.values()):
                        if watch.submitted:
                            watch.resolve("lost")
                continue
            try:
                await self.client.system_stats()  # HTTP can fail while the socket lives on
                await self.reconcile()
            except EndpointUnavailable as exc:
                log.warning("endpoint %s: probe failed, reconnecting: %s", self.name, exc)
                self._set_status("down", str(exc))
                if self._ws is not None:
                    await self._ws.close()

    async def reconcile(self) -> None:
        """Settle watched prompts from /history and /queue, for events we may have missed."""
        pending = [w for w in self.watches.values() if w.submitted and not w.future.done()]
        if not pending:
            return
        queue = await self.client.queue()
        queued = {item[1] for key in ("queue_running", "queue_pending") for item in queue[key]}
        for watch in pending:
            if watch.prompt_id in queued:
                continue
            # ComfyUI writes history before it drops a prompt from its queue, so a prompt in
            # neither was never run here: the endpoint restarted and forgot it.
            found = await self.client.history(watch.prompt_id) is not None
            watch.resolve("ended" if found else "lost")
