"""a. Overhead per task: submit -> webhook received, minus the prompt's own execution time
(execution_start -> execution_success timestamps in the emulator's history), at concurrency
1 and 16, against the same work sent straight to an emulator (POST /prompt -> `executing`
null on its websocket)."""

from __future__ import annotations

import asyncio
import time

from ..client import (
    DirectComfy,
    HttpConnection,
    WebhookSink,
    blank_graph,
    blank_prompt,
    describe_phases,
    exec_ms,
    get_json,
    run_pool,
    submission,
    submit,
)
from ..harness import Emulators, Server, rss_mb
from ..report import CaseResult, Context, Row, summary

WARMUP = 30
TARGET_P50, TARGET_P99 = 5.0, 25.0


async def through_server(
    ctx: Context,
    server: Server,
    emulators: Emulators,
    sink: WebhookSink,
    concurrency: int,
    count: int,
) -> list[float]:
    conns = [HttpConnection(server.url) for _ in range(concurrency)]
    walls: dict[str, float] = {}
    records: list[dict] = []

    async def job(i: int, worker: int) -> None:
        body = submission({"color": ctx.color()}, sink.url)
        t0 = time.perf_counter()
        task = await submit(conns[worker], body)
        t1, record = await sink.wait(task["id"])
        if record["status"] != "completed":
            raise RuntimeError(f"task {task['id']} ended {record['status']}: {record['error']}")
        walls[record["comfyui_task_id"]] = (t1 - t0) * 1000
        records.append(record)

    await run_pool(count, concurrency, job)
    for conn in conns:
        await conn.close()
    history = await get_json(emulators.url(), "/history")
    ctx.shared["records"] = records
    return [wall - exec_ms(history[pid]["status"]["messages"]) for pid, wall in walls.items()]


async def direct(ctx: Context, emulators: Emulators, concurrency: int, count: int) -> list[float]:
    comfy = await DirectComfy(emulators.addresses[0], connections=concurrency).start()
    graph = blank_graph()
    overheads: list[float] = []

    async def job(i: int, worker: int) -> None:
        t0, t1, ms = await comfy.run(blank_prompt(graph, ctx.color()), worker)
        overheads.append((t1 - t0) * 1000 - ms)

    try:
        await run_pool(count, concurrency, job)
    finally:
        await comfy.stop()
    return overheads


def _fmt(stats: dict[str, float]) -> str:
    return f"{stats['p50']:.1f} / {stats['p99']:.1f} / {stats['max']:.1f} ms"


async def run(ctx: Context) -> CaseResult:
    result = CaseResult("a", "Overhead per task")
    sizes = {1: ctx.size(400, 150, 10), 16: ctx.size(800, 320, 32)}
    warmup = ctx.size(WARMUP, WARMUP, 3)
    floor_emu = Emulators(ctx.logs, ctx.tmp / "a-floor", name="a-floor-emulator")
    server_emu = Emulators(ctx.logs, ctx.tmp / "a-server", name="a-emulator")
    server = Server(ctx.logs, ctx.tmp / "a-data", server_emu.addresses, name="a-server")
    sink = await WebhookSink().start()
    try:
        await asyncio.sleep(0.5)
        ctx.shared["rss_idle"] = rss_mb(server.pid)
        ctx.shared["rss_idle_emulator"] = rss_mb(floor_emu.pid)
        await direct(ctx, floor_emu, 1, warmup)
        await through_server(ctx, server, server_emu, sink, 1, warmup)
        for concurrency, count in sizes.items():
            floor = summary(await direct(ctx, floor_emu, concurrency, count))
            ours = summary(await through_server(ctx, server, server_emu, sink, concurrency, count))
            target = met = None
            if concurrency == 1:
                target = f"p50 <= {TARGET_P50:g} ms, p99 <= {TARGET_P99:g} ms"
                met = ours["p50"] <= TARGET_P50 and ours["p99"] <= TARGET_P99
            result.rows.append(
                Row(
                    f"overhead p50 / p99 / max, concurrency {concurrency} (SQLite, local storage)",
                    _fmt(ours),
                    _fmt(floor),
                    target or "-",
                    met,
                )
            )
            result.notes.append(
                f"Concurrency {concurrency}: {ours['n']} tasks through the server (mean overhead "
                f"{ours['mean']:.1f} ms), {floor['n']} prompts straight to the emulator (mean "
                f"{floor['mean']:.1f} ms); after {warmup} warm-up tasks each. Median ms per "
                f"phase, from the records' `timings`: {describe_phases(ctx.shared['records'])}."
            )
    finally:
        await sink.stop()
        server.stop()
        server_emu.stop()
        floor_emu.stop()
    result.notes += [
        "Workflow `blank` (EmptyImage 64x64 -> SaveImage), a new `color` per task so nothing is "
        "served from ComfyUI's cache; one emulator with no added node time; the server with its "
        "defaults (SQLite, local storage, 2 prompts in flight per endpoint) and "
        "`COMFYUI_CLEANUP=off`, so the emulator's history keeps the timestamps.",
        "Overhead = (webhook received - POST sent) - (execution_success - execution_start), the "
        "latter from the emulator's history (epoch ms, so +-1 ms). The floor is the same prompt "
        "POSTed to a second, identical emulator and awaited as `executing` null on its "
        "websocket, minus the same execution time: protocol, queueing and the emulator's own "
        "bookkeeping. At concurrency 16 both include the wait behind the other 15 tasks on the "
        "single endpoint.",
        "Each closed-loop worker waits for its task's webhook before submitting the next.",
    ]
    return result
