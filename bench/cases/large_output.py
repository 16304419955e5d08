"""f. A ~100 MB output through storage: the server's peak RSS growth while it fetches the
file from /view and stores it, against a plain streamed copy of the same /view response.

No emulated node makes noise, so the big file is an input: a ~100 MB PNG of random pixels
is put in the emulator's input folder, and a drop-in workflow (WORKFLOWS_DIR) runs
LoadImage -> SaveImage on it with existing nodes only; SaveImage writes it out again at
about the same size (noise does not compress).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from importlib.metadata import entry_points
from pathlib import Path

from aiohttp import ClientSession

from ..client import DirectComfy, HttpConnection, WebhookSink, submission, submit
from ..harness import Emulators, Server, free_port, peak_rss_mb, reset_peak_rss, rss_mb
from ..report import CaseResult, Context, Row

SIDE = 5800
"""5800 x 5800 RGB = 100.9 MB of pixels."""
RUNS = 3
TARGET_GROWTH = 32.0
WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "noise.png"}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "big"}},
}


def make_noise(path: Path, side: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(path, compress_level=0)


async def streamed_copy(url: str, params: dict, target: Path) -> tuple[int, float, float]:
    """(bytes, seconds, peak RSS growth MB of this process) of a chunked GET to a file."""
    pid = os.getpid()
    reset_peak_rss(pid)
    before = rss_mb(pid)
    size = 0
    t0 = time.perf_counter()
    async with ClientSession() as session, session.get(url, params=params) as response:
        response.raise_for_status()
        with open(target, "wb") as out:  # noqa: ASYNC230 - the floor: plain writes
            async for chunk in response.content.iter_chunked(256 * 1024):
                out.write(chunk)
                size += len(chunk)
    return size, time.perf_counter() - t0, peak_rss_mb(pid) - before


def s3_plugin_present() -> bool:
    return any(ep.name == "s3_storage" for ep in entry_points(group="comfyui_server"))


async def through_server(
    ctx: Context, emulators: Emulators, env: dict[str, str], label: str
) -> tuple[list[float], list[float], int]:
    workflows = ctx.tmp / "f-workflows"
    workflows.mkdir(exist_ok=True)
    (workflows / "big.json").write_text(json.dumps(WORKFLOW))
    server = Server(
        ctx.logs,
        ctx.tmp / f"f-data-{label}",
        emulators.addresses,
        {"WORKFLOWS_DIR": str(workflows), **env},
        name=f"f-server-{label}",
    )
    sink = await WebhookSink().start()
    conn = HttpConnection(server.url)
    growths, walls, size = [], [], 0
    try:
        # a small task first, so one-time costs (lazy imports, first connections) stay out
        warm = await submit(conn, submission({"color": ctx.color()}, sink.url))
        await sink.wait(warm["id"])
        for _ in range(RUNS):
            await asyncio.sleep(0.5)
            reset_peak_rss(server.pid)
            before = rss_mb(server.pid)
            t0 = time.perf_counter()
            task = await submit(conn, submission({}, sink.url, service_type="big"))
            t1, record = await sink.wait(task["id"], limit=180)
            if record["status"] != "completed" or record["error_code"]:
                raise RuntimeError(f"big task ended {record['status']}: {record['error']}")
            growths.append(peak_rss_mb(server.pid) - before)
            walls.append(t1 - t0)
            size = record["outputs"][0]["size"]
    finally:
        await conn.close()
        await sink.stop()
        server.stop()
    return growths, walls, size


async def run(ctx: Context) -> CaseResult:
    result = CaseResult("f", "A 100 MB output through storage")
    side = ctx.size(SIDE, 2900, 300)
    base = ctx.tmp / "f-emu"
    make_noise(base / "emu0" / "input" / "noise.png", side)
    emulators = Emulators(ctx.logs, base, name="f-emulator")
    stops = [emulators.stop]
    try:
        comfy = await DirectComfy(emulators.addresses[0]).start()
        try:
            _, _, exec_ms = await comfy.run(WORKFLOW)
        finally:
            await comfy.stop()
        name = sorted(os.listdir(emulators.base_dirs[0] / "output"))[-1]
        params = {"filename": name, "subfolder": "", "type": "output"}
        size, copy_s, copy_growth = await streamed_copy(
            emulators.url() + "/view", params, ctx.tmp / "f-copy.png"
        )
        variants = [("local", {})]
        if s3_plugin_present():
            env, stop_moto = _moto()
            stops.append(stop_moto)
            variants.append(("S3 (moto)", env))
        for label, env in variants:
            growths, walls, stored = await through_server(ctx, emulators, env, label)
            result.rows.append(
                Row(
                    f"peak RSS growth, one {stored / 1e6:.0f} MB output, {label} storage",
                    f"{max(growths):.1f} MB",
                    f"{copy_growth:.1f} MB",
                    f"<= {TARGET_GROWTH:g} MB",
                    max(growths) <= TARGET_GROWTH,
                )
            )
            result.notes.append(
                f"{label}: {RUNS} tasks, growth {', '.join(f'{g:.1f}' for g in growths)} MB; "
                f"submit -> webhook {', '.join(f'{w:.2f}' for w in walls)} s."
            )
        if not s3_plugin_present():
            result.notes.append(
                "S3 not measured: no `s3_storage` entry point is installed in this run, so "
                "only local storage was measured."
            )
    finally:
        for stop in stops:
            stop()
    result.notes += [
        f"The file: a {side}x{side} PNG of random pixels ({size / 1e6:.1f} MB as SaveImage "
        f"wrote it; the prompt took {exec_ms / 1000:.1f} s inside the emulator).",
        "Growth = VmHWM after the task minus VmRSS before it, with the peak reset just before "
        "submitting (`/proc/PID/clear_refs`); the worst of the runs is reported. Each server "
        "ran one small `blank` task first, so one-time costs are not counted.",
        f"Floor: the same file streamed from the emulator's /view to disk by aiohttp in 256 KiB "
        f"chunks in the bench process: {copy_s:.2f} s, peak RSS growth of that process "
        f"{copy_growth:.1f} MB.",
    ]
    return result


def _moto() -> tuple[dict[str, str], object]:
    """A moto S3 server in this process with a bucket: (settings for the server, stop)."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per S3 request otherwise

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    keys = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys)
    s3.create_bucket(Bucket="bench")
    env = {
        "S3_BUCKET": "bench",
        "S3_ENDPOINT_URL": endpoint,
        "S3_REGION_NAME": "us-east-1",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
    }
    return env, server.stop
