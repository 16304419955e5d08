"""c. Submission alone: POST req/s with the task recorded (no endpoint up, so nothing is
dispatched), on SQLite and PostgreSQL, against ComfyUI's own POST /prompt on an emulator
that queues every prompt and runs none. The server's RSS with 10,000 queued tasks (figure e)
is read at the end of the SQLite run."""

from __future__ import annotations

import time

from ..client import DirectComfy, HttpConnection, blank_graph, blank_prompt, run_pool, submission
from ..harness import Emulators, Server, free_port, rss_mb, scratch_postgres
from ..report import CaseResult, Context, Row, percentile

CONCURRENCY = 32
WARMUP = 500
QUEUED = 10_000
TARGET = 1500


async def load(url: str, bodies, count: int, path: str) -> tuple[float, list[float]]:
    """POST `count` bodies from CONCURRENCY connections; (req/s, latencies in ms)."""
    conns = [HttpConnection(url) for _ in range(CONCURRENCY)]
    latencies: list[float] = []

    async def job(i: int, worker: int) -> None:
        body = bodies()
        t0 = time.perf_counter()
        status, data = await conns[worker].request("POST", path, body)
        latencies.append((time.perf_counter() - t0) * 1000)
        if status != 200:
            raise RuntimeError(f"POST {path} answered {status}: {data[:300]!r}")

    t0 = time.perf_counter()
    try:
        await run_pool(count, CONCURRENCY, job)
    finally:
        for conn in conns:
            await conn.close()
    return count / (time.perf_counter() - t0), latencies


async def through_server(ctx: Context, label: str, database_url: str | None, count: int):
    env = {"DATABASE_URL": database_url} if database_url else {}
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens: every task stays queued
    server = Server(
        ctx.logs,
        ctx.tmp / f"c-data-{label}",
        [nowhere],
        env,
        name=f"c-server-{label}",
        wait_up=False,
    )
    try:

        def body() -> bytes:
            return submission({"color": ctx.color()}, "http://127.0.0.1:9/hook")

        warmup = min(WARMUP, count // 10)
        await load(server.url, body, warmup, "/api/v1")
        rate, latencies = await load(server.url, body, count - warmup, "/api/v1")
        return rate, latencies, rss_mb(server.pid)
    finally:
        server.stop()


async def direct(ctx: Context, count: int):
    emulators = Emulators(ctx.logs, ctx.tmp / "c-floor", hang=True, name="c-floor-emulator")
    comfy = DirectComfy(emulators.addresses[0])
    graph = blank_graph()
    try:
        idle = rss_mb(emulators.pid)

        def body() -> bytes:
            import msgspec

            prompt = blank_prompt(graph, ctx.color())
            return msgspec.json.encode({"prompt": prompt, "client_id": comfy.client_id})

        warmup = min(WARMUP, count // 10)
        await load(emulators.url(), body, warmup, "/prompt")
        rate, latencies = await load(emulators.url(), body, count - warmup, "/prompt")
        return rate, latencies, rss_mb(emulators.pid) - idle
    finally:
        emulators.stop()


async def run(ctx: Context) -> CaseResult:
    result = CaseResult("c", "Submission alone")
    count = ctx.size(QUEUED, 3000, 300)
    floor, floor_lat, floor_growth = await direct(ctx, count)
    ctx.shared["rss_growth_queued_emulator"] = floor_growth
    ctx.shared["queued"] = count
    for label in ("SQLite", "PostgreSQL"):
        if label == "PostgreSQL":
            async with scratch_postgres() as url:
                rate, latencies, rss = await through_server(ctx, label, url, count)
        else:
            rate, latencies, rss = await through_server(ctx, label, None, count)
            ctx.shared["rss_queued_sqlite"] = rss
        ctx.shared[f"rss_queued_{label}"] = rss
        result.rows.append(
            Row(
                f"POST req/s with the record written, {label}",
                f"{rate:.0f} /s",
                f"{floor:.0f} /s",
                f">= {TARGET} /s" if label == "PostgreSQL" else "-",
                rate >= TARGET if label == "PostgreSQL" else None,
            )
        )
        result.notes.append(
            f"{label}: POST latency p50 {percentile(latencies, 50):.1f} ms, p99 "
            f"{percentile(latencies, 99):.1f} ms; server RSS {rss:.0f} MB with {count:,} tasks "
            "queued."
        )
    result.notes += [
        f"{count:,} `blank` submissions with a callback URL from {CONCURRENCY} keep-alive "
        f"connections of a lean asyncio HTTP/1.1 client in the bench process; the first "
        f"{WARMUP} are a warm-up, the rate is over the rest. Every response is the task record "
        "(status `queued`), so each one is in the database before it is answered.",
        "The only endpoint configured is a port where nothing listens, so no task is "
        "dispatched: this is the submission path alone.",
        f"Floor: the same number of prompts POSTed to one emulator told to hang (one prompt "
        f"blocks, the rest queue): ComfyUI validating and queueing a prompt. POST latency "
        f"p50 {percentile(floor_lat, 50):.1f} ms, p99 {percentile(floor_lat, 99):.1f} ms.",
    ]
    return result
