"""The load-generating side, run in the bench process: a lean HTTP/1.1 client, a webhook
receiver and a client that drives an emulator directly (the floor).

The HTTP client is a few lines over asyncio streams (keep-alive, pre-encoded bodies) so the
load generator costs little CPU on a 2-core machine and the server is what gets measured.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from importlib import resources
from typing import Any

import msgspec
from aiohttp import ClientSession, WSMsgType, web

from .harness import free_port


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; responses must carry Content-Length."""

    def __init__(self, url: str) -> None:
        hostport = url.split("://", 1)[1].split("/", 1)[0]
        self.host, port = hostport.rsplit(":", 1)
        self.port = int(port)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(
            self.host, self.port, limit=2**24
        )

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        reused = self._writer is not None
        try:
            return await self._request(method, path, body)
        except (asyncio.IncompleteReadError, ConnectionResetError) as exc:
            # the server closed an idle keep-alive connection (uvicorn: after 5 s) before
            # reading this request; nothing was processed, so one retry on a new one is safe
            if not reused or getattr(exc, "partial", b""):
                raise
            await self.close()
            return await self._request(method, path, body)

    async def _request(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        if self._writer is None:
            await self._connect()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self._writer.write(head.encode() + b"\r\n" + (body or b""))
        raw = await self._reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, close = None, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        if length is None:
            raise RuntimeError(f"{method} {path}: response without Content-Length")
        data = await self._reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, data

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = self._reader = None


async def get_json(url: str, path: str) -> Any:
    conn = HttpConnection(url)
    try:
        status, body = await conn.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}")
        return json.loads(body)
    finally:
        await conn.close()


# ---- webhooks -------------------------------------------------------------------------------


class WebhookSink:
    """Records when each task's webhook arrived (perf_counter), by task id."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.arrived: dict[int, tuple[float, dict]] = {}
        self._waiters: dict[int, asyncio.Future] = {}
        self._count_waiters: list[tuple[int, asyncio.Future]] = []
        self._runner: web.AppRunner | None = None

    async def start(self) -> WebhookSink:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = time.perf_counter()
        record = msgspec.json.decode(body)
        record["_received_at"] = time.time()
        self.arrived[record["id"]] = (now, record)
        waiter = self._waiters.pop(record["id"], None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        for count, future in self._count_waiters:
            if len(self.arrived) >= count and not future.done():
                future.set_result(None)
        return web.Response(status=200)

    async def wait(self, task_id: int, limit: float = 60) -> tuple[float, dict]:
        if task_id not in self.arrived:
            future = self._waiters.setdefault(task_id, asyncio.get_running_loop().create_future())
            await asyncio.wait_for(future, limit)
        return self.arrived[task_id]

    async def wait_count(self, count: int, limit: float = 120) -> None:
        if len(self.arrived) >= count:
            return
        future = asyncio.get_running_loop().create_future()
        self._count_waiters.append((count, future))
        try:
            await asyncio.wait_for(future, limit)
        except TimeoutError:
            raise TimeoutError(f"{len(self.arrived)} of {count} webhooks arrived") from None

    def clear(self) -> None:
        self.arrived.clear()


def phases(records: list[dict]) -> dict[str, float]:
    """Median milliseconds of each phase the server records in `timings`, plus `notify`:
    from `finished_at` to the webhook's arrival (same host, same wall clock)."""
    import datetime as dt
    import statistics

    values: dict[str, list[float]] = {}
    for record in records:
        for name, seconds in (record.get("timings") or {}).items():
            if isinstance(seconds, int | float):
                values.setdefault(name, []).append(seconds * 1000)
        finished = record.get("finished_at")
        if finished and "_received_at" in record:
            at = dt.datetime.fromisoformat(finished.replace("Z", "+00:00")).timestamp()
            values.setdefault("notify", []).append((record["_received_at"] - at) * 1000)
    return {name: statistics.median(v) for name, v in values.items()}


def describe_phases(records: list[dict]) -> str:
    return ", ".join(f"{name} {ms:.1f}" for name, ms in phases(records).items())


# ---- submissions ----------------------------------------------------------------------------


def submission(params: dict, callback: str | None, service_type: str = "blank") -> bytes:
    body: dict[str, Any] = {"service_type": service_type, "params": params}
    if callback:
        body["client_callback_url"] = callback
    return msgspec.json.encode(body)


async def submit(conn: HttpConnection, body: bytes) -> dict:
    status, data = await conn.request("POST", "/api/v1", body)
    if status != 200:
        raise RuntimeError(f"submission answered {status}: {data[:300]!r}")
    return msgspec.json.decode(data)


async def run_pool(count: int, concurrency: int, job) -> None:
    """Run `job(i, worker)` for i in range(count) on `concurrency` workers."""
    counter = iter(range(count))

    async def worker(index: int) -> None:
        for i in counter:
            await job(i, index)

    await asyncio.gather(*(worker(w) for w in range(concurrency)))


# ---- driving an emulator directly (the floor) -------------------------------------------------


def blank_graph() -> dict:
    text = resources.files("comfyui_server.workflows.demo").joinpath("blank.json").read_text()
    return json.loads(text)


def blank_prompt(graph: dict, color: int, width: int = 64, height: int = 64) -> dict:
    """The prompt the server would build: params set, output prefix tagged per attempt."""
    prompt = copy.deepcopy(graph)
    prompt["1"]["inputs"].update(width=width, height=height, color=color)
    prompt["2"]["inputs"]["filename_prefix"] = f"ComfyUI_{uuid.uuid4().hex[:12]}"
    return prompt


def exec_ms(messages: list) -> float | None:
    """ComfyUI's own execution time of a prompt: execution_start -> execution_success."""
    stamps = {kind: data.get("timestamp") for kind, data in messages}
    start, end = stamps.get("execution_start"), stamps.get("execution_success")
    return None if start is None or end is None else float(end - start)


class DirectComfy:
    """A minimal ComfyUI client: POST /prompt, then `executing` null over its websocket."""

    def __init__(self, address: str, connections: int = 1) -> None:
        self.url = f"http://{address}"
        self.client_id = uuid.uuid4().hex
        self.conns = [HttpConnection(self.url) for _ in range(connections)]
        self._messages: dict[str, list] = {}
        self._done: dict[str, asyncio.Future] = {}
        self._session: ClientSession | None = None
        self._reader: asyncio.Task | None = None

    async def start(self) -> DirectComfy:
        self._session = ClientSession()
        ws = await self._session.ws_connect(
            f"{self.url.replace('http', 'ws', 1)}/ws?clientId={self.client_id}", max_msg_size=0
        )
        self._ws = ws
        self._reader = asyncio.create_task(self._read(ws))
        return self

    async def stop(self) -> None:
        if self._reader:
            self._reader.cancel()
            await self._ws.close()
        for conn in self.conns:
            await conn.close()
        if self._session:
            await self._session.close()

    async def _read(self, ws) -> None:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            message = msgspec.json.decode(msg.data)
            data = message.get("data") or {}
            prompt_id = data.get("prompt_id")
            if prompt_id not in self._done:
                continue
            kind = message["type"]
            if kind == "executing" and data.get("node") is None:
                future = self._done[prompt_id]
                if not future.done():
                    future.set_result(time.perf_counter())
            elif kind.startswith("execution_"):
                self._messages[prompt_id].append((kind, data))

    async def run(self, prompt: dict, conn_index: int = 0) -> tuple[float, float, float]:
        """(posted at, ended at, execution ms) of one prompt, perf_counter seconds."""
        prompt_id = str(uuid.uuid4())
        self._done[prompt_id] = asyncio.get_running_loop().create_future()
        self._messages[prompt_id] = []
        body = msgspec.json.encode(
            {"prompt": prompt, "client_id": self.client_id, "prompt_id": prompt_id}
        )
        t0 = time.perf_counter()
        status, data = await self.conns[conn_index].request("POST", "/prompt", body)
        if status != 200:
            raise RuntimeError(f"emulator rejected the prompt: {data[:300]!r}")
        try:
            t1 = await self._done[prompt_id]
        finally:
            del self._done[prompt_id]
        return t0, t1, exec_ms(self._messages.pop(prompt_id)) or 0.0

    async def post_only(self, prompt: dict, conn_index: int = 0) -> None:
        body = msgspec.json.encode({"prompt": prompt, "client_id": self.client_id})
        status, data = await self.conns[conn_index].request("POST", "/prompt", body)
        if status != 200:
            raise RuntimeError(f"emulator rejected the prompt: {data[:300]!r}")
