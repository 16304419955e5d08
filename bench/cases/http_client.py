"""g. What one HTTP request costs the client. comfyui-server makes three per task (POST
/prompt, GET /view, the webhook) as httpx requests sent through an httpx transport on
aiohttp's client (core/http_transport.py); this measures the CPU time the client side
spends per request that way, beside httpx's AsyncClient on its default transport, httpcore
alone and aiohttp's own API, on the same small GET to an emulator in its own process, so
only the client's time is counted. It runs under uvloop, as the server does."""

from __future__ import annotations

import time

import aiohttp
import httpcore
import httpx
from comfyui_server.core.http_transport import HttpClient

from ..harness import Emulators
from ..report import CaseResult, Context, Row

PATH = "/system_stats"


async def per_request(count: int, one) -> float:
    """Milliseconds of this process's CPU per request, after a warm-up."""
    for _ in range(50):
        await one()
    started = time.process_time()
    for _ in range(count):
        await one()
    return 1000 * (time.process_time() - started) / count


async def run(ctx: Context) -> CaseResult:
    result = CaseResult("g", "HTTP client cost")
    count = ctx.size(3000, 500, 50)
    emulator = Emulators(ctx.logs, ctx.tmp / "g-emulator", name="g-emulator")
    url = f"http://{emulator.addresses[0]}{PATH}"
    figures: dict[str, float] = {}
    try:
        # as core.comfyui.client configures it: one pool per endpoint
        ours = HttpClient(timeout=httpx.Timeout(30.0))
        async with ours:

            async def with_ours() -> None:
                (await ours.request("GET", url)).json()

            figures["httpx over aiohttp (as used)"] = await per_request(count, with_ours)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=8)
        async with httpx.AsyncClient(limits=limits, trust_env=False) as client:

            async def with_httpx() -> None:
                (await client.get(url)).json()

            figures["httpx AsyncClient, default transport"] = await per_request(count, with_httpx)
        async with httpcore.AsyncConnectionPool(max_connections=8) as pool:

            async def with_httpcore() -> None:
                await pool.request("GET", url)

            figures["httpcore alone"] = await per_request(count, with_httpcore)
        async with aiohttp.ClientSession() as session:

            async def with_aiohttp() -> None:
                async with session.get(url) as response:
                    await response.json()

            figures["aiohttp client"] = await per_request(count, with_aiohttp)
    finally:
        emulator.stop()
    for name, ms in figures.items():
        result.rows.append(Row(f"client CPU per request, {name}", f"{ms:.3f} ms"))
    result.notes.append(
        f"{count} sequential GET {PATH} on one keep-alive connection to an emulator in its "
        "own process, after 50 warm-up requests; CPU time of the bench process only. "
        "comfyui-server keeps httpx (a fixed part of the stack) as its HTTP API: httpx requests "
        "and responses, sent straight to an httpx transport that uses aiohttp's connector "
        "on the wire; the others are for comparison."
    )
    return result
