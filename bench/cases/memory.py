"""e. Memory: the server's RSS idle, with 10,000 queued tasks and with 50 endpoints
connected. The floor is the emulator's own RSS for the same state (idle; 10,000 prompts
queued; 50 emulated ComfyUIs in one process)."""

from __future__ import annotations

import asyncio

from ..harness import Emulators, Server, rss_mb
from ..report import CaseResult, Context, Row
from . import submission

ENDPOINTS = 50
TARGET_QUEUED = 250.0


async def settled_rss(ctx: Context, label: str, endpoints: int) -> tuple[float, float]:
    """(server RSS, emulators' RSS) in MB, 1 s after a server came up with `endpoints`
    emulated ComfyUIs (all in one process) connected and no task."""
    emulators = Emulators(
        ctx.logs, ctx.tmp / f"e-{label}", count=endpoints, name=f"e-{label}-emulators"
    )
    try:
        server = Server(
            ctx.logs, ctx.tmp / f"e-{label}-data", emulators.addresses, name=f"e-{label}-server"
        )
        try:
            await asyncio.sleep(1.0)
            return rss_mb(server.pid), rss_mb(emulators.pid)
        finally:
            server.stop()
    finally:
        emulators.stop()


async def run(ctx: Context) -> CaseResult:
    result = CaseResult("e", "Memory")
    server_idle, emulator_idle = await settled_rss(ctx, "idle", 1)
    if "rss_queued_sqlite" not in ctx.shared:  # case c not run: queue 10,000 tasks here
        await submission.run(ctx)
    queued = ctx.shared["queued"]
    rss_queued = ctx.shared["rss_queued_sqlite"]
    emulator_queued = emulator_idle + ctx.shared["rss_growth_queued_emulator"]
    fleet, fleet_floor = await settled_rss(ctx, "fleet", ENDPOINTS)
    result.rows += [
        Row(
            "server RSS, idle (1 endpoint up, no task yet)",
            f"{server_idle:.0f} MB",
            f"{emulator_idle:.0f} MB",
        ),
        Row(
            f"server RSS, {queued:,} tasks queued (SQLite, no endpoint up)",
            f"{rss_queued:.0f} MB",
            f"{emulator_queued:.0f} MB",
            f"<= {TARGET_QUEUED:g} MB",
            rss_queued <= TARGET_QUEUED,
        ),
        Row(
            f"server RSS, {ENDPOINTS} endpoints connected",
            f"{fleet:.0f} MB",
            f"{fleet_floor:.0f} MB ({ENDPOINTS} emulators)",
        ),
    ]
    result.notes += [
        "RSS is VmRSS from /proc of the `comfyui-server serve` process, 1 s after it was ready "
        "(every endpoint up), or at the end of the submission run of case c for the queued "
        "figure (the tasks are in SQLite; what the process keeps per task is what grows).",
        "Floor: the emulator process's RSS in the same state: one idle emulator; one emulator "
        f"holding {queued:,} prompts in its queue (its idle RSS plus the growth measured in "
        f"case c); {ENDPOINTS} emulators on one event loop, each with one websocket client "
        "(the server) connected.",
    ]
    return result
