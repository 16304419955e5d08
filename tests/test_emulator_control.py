"""The emulator's configuration and fault injection: kill/restart, failures, hangs, drops."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import httpx
import pytest
from comfyui_server.core.testing.emulator_thread import EmulatorThread


def empty_save(color: int = 0, prefix: str = "ComfyUI", size: int = 16) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": size, "height": size, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def submit(
    session: aiohttp.ClientSession, emulator: EmulatorThread, prompt: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    async with session.post(f"{emulator.url}/prompt", json={"prompt": prompt, **extra}) as reply:
        assert reply.status == 200, await reply.text()
        return await reply.json()


async def messages_until_end(
    ws: aiohttp.ClientWebSocketResponse, prompt_id: str
) -> list[dict[str, Any]]:
    """Text messages up to and including `executing {node: null}` for the prompt."""
    received = []
    while True:
        message = await ws.receive(timeout=10)
        if message.type != aiohttp.WSMsgType.TEXT:
            continue
        data = json.loads(message.data)
        received.append(data)
        if data["type"] == "executing" and data["data"] == {"node": None, "prompt_id": prompt_id}:
            return received


async def wait_for(predicate: Callable[[], bool], seconds: float = 10) -> None:
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    pytest.fail("condition not reached")


async def assert_dropped(ws: aiohttp.ClientWebSocketResponse) -> None:
    """The connection ended without a close frame: aiohttp reports 1006."""
    while (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
        pass
    assert ws.close_code == 1006


async def test_kill_drops_sockets_refuses_connects_and_restart_forgets_everything(
    comfyui_emulator: EmulatorThread, session: aiohttp.ClientSession
) -> None:
    ws = await session.ws_connect(f"{comfyui_emulator.url}/ws?clientId=k")
    await ws.receive(timeout=5)
    for color in (1, 2):
        done = await submit(session, comfyui_emulator, empty_save(color), client_id="k")
        await messages_until_end(ws, done["prompt_id"])
    assert done["number"] == 1
    comfyui_emulator.hang()
    await submit(session, comfyui_emulator, empty_save(3), client_id="k")
    port = comfyui_emulator.port

    comfyui_emulator.kill()
    await assert_dropped(ws)
    with pytest.raises(aiohttp.ClientConnectorError):
        await session.get(f"{comfyui_emulator.url}/prompt")

    comfyui_emulator.hang(False)
    comfyui_emulator.restart()
    assert comfyui_emulator.port == port
    async with session.get(f"{comfyui_emulator.url}/history") as reply:
        assert await reply.json() == {}
    async with session.get(f"{comfyui_emulator.url}/queue") as reply:
        assert await reply.json() == {"queue_running": [], "queue_pending": []}
    fresh = await submit(session, comfyui_emulator, empty_save(1))
    assert fresh["number"] == 0
    assert (comfyui_emulator.output_dir / "ComfyUI_00002_.png").exists()  # files persist


async def test_fail_next_fails_the_next_prompts_at_their_first_node(
    comfyui_emulator: EmulatorThread, session: aiohttp.ClientSession
) -> None:
    ws = await session.ws_connect(f"{comfyui_emulator.url}/ws?clientId=f")
    comfyui_emulator.fail_next(
        2, message="CUDA out of memory", exception_type="torch.OutOfMemoryError"
    )
    for _ in range(2):
        # Even a prompt that would be cached fails: the failure ignores the cache.
        done = await submit(session, comfyui_emulator, empty_save(), client_id="f")
        received = await messages_until_end(ws, done["prompt_id"])
        kinds = [m["type"] for m in received if m["type"] not in ("status", "progress_state")]
        assert kinds == [
            "execution_start",
            "execution_cached",
            "executing",
            "execution_error",
            "executing",
        ]
        error = next(m["data"] for m in received if m["type"] == "execution_error")
        assert error["node_id"] == "1"
        assert error["exception_type"] == "torch.OutOfMemoryError"
        assert error["exception_message"] == "CUDA out of memory\n"
        entry = comfyui_emulator.history[done["prompt_id"]]
        assert entry["status"]["status_str"] == "error"
        assert entry["outputs"] == {}
    done = await submit(session, comfyui_emulator, empty_save(), client_id="f")
    received = await messages_until_end(ws, done["prompt_id"])
    assert "execution_success" in [m["type"] for m in received]


async def test_hang_blocks_until_interrupted(
    comfyui_emulator: EmulatorThread, session: aiohttp.ClientSession
) -> None:
    ws = await session.ws_connect(f"{comfyui_emulator.url}/ws?clientId=h")
    comfyui_emulator.hang()
    done = await submit(session, comfyui_emulator, empty_save(), client_id="h")
    await asyncio.sleep(0.2)
    assert [item[1] for item in comfyui_emulator.queue_running] == [done["prompt_id"]]
    async with session.post(f"{comfyui_emulator.url}/interrupt", json={"prompt_id": "other"}):
        pass
    await asyncio.sleep(0.1)
    assert comfyui_emulator.queue_running
    async with session.post(
        f"{comfyui_emulator.url}/interrupt", json={"prompt_id": done["prompt_id"]}
    ):
        pass
    received = await messages_until_end(ws, done["prompt_id"])
    interrupted = next(m["data"] for m in received if m["type"] == "execution_interrupted")
    assert interrupted["node_id"] == "1"
    assert interrupted["executed"] == []

    second = await submit(session, comfyui_emulator, empty_save(5), client_id="h")
    await asyncio.sleep(0.1)
    comfyui_emulator.hang(False)
    received = await messages_until_end(ws, second["prompt_id"])
    assert "execution_success" in [m["type"] for m in received]


async def test_drop_websockets_aborts_sockets_but_server_lives_on(
    comfyui_emulator: EmulatorThread, session: aiohttp.ClientSession
) -> None:
    sockets = [
        await session.ws_connect(f"{comfyui_emulator.url}/ws?clientId=d{i}") for i in range(2)
    ]
    await wait_for(lambda: len(comfyui_emulator.client_ids) == 2)
    comfyui_emulator.drop_websockets()
    for ws in sockets:
        await assert_dropped(ws)
    await wait_for(lambda: comfyui_emulator.client_ids == [])
    async with session.get(f"{comfyui_emulator.url}/prompt") as reply:
        assert reply.status == 200
    again = await session.ws_connect(f"{comfyui_emulator.url}/ws?clientId=d0")
    status = json.loads((await again.receive(timeout=5)).data)
    assert status["data"]["sid"] == "d0"


async def test_object_info_exclude_hides_a_node_like_a_missing_custom_node(
    comfyui_emulator_factory: Callable[..., EmulatorThread], session: aiohttp.ClientSession
) -> None:
    emulator = comfyui_emulator_factory(object_info_exclude=["Clean input and output file"])
    async with session.get(
        f"{emulator.url}/object_info/Clean%20input%20and%20output%20file"
    ) as reply:
        assert await reply.json() == {}
    async with session.get(f"{emulator.url}/object_info") as reply:
        classes = await reply.json()
    assert "Clean input and output file" not in classes and "SaveImage" in classes
    prompt = {
        "1": {
            "class_type": "Clean input and output file",
            "inputs": {"type": "output", "path": "x.png"},
        }
    }
    async with session.post(f"{emulator.url}/prompt", json={"prompt": prompt}) as reply:
        assert reply.status == 400
        error = (await reply.json())["error"]
    assert error["type"] == "invalid_prompt"
    assert (
        error["message"]
        == "Cannot execute because node Clean input and output file does not exist."
    )


async def test_cache_can_be_turned_off(
    comfyui_emulator_factory: Callable[..., EmulatorThread], session: aiohttp.ClientSession
) -> None:
    emulator = comfyui_emulator_factory(cache=False)
    ws = await session.ws_connect(f"{emulator.url}/ws?clientId=c")
    names = []
    for _ in range(2):
        done = await submit(session, emulator, empty_save(), client_id="c")
        received = await messages_until_end(ws, done["prompt_id"])
        cached = next(m["data"]["nodes"] for m in received if m["type"] == "execution_cached")
        assert cached == []
        names.append(emulator.history[done["prompt_id"]]["outputs"]["2"]["images"][0]["filename"])
    assert names == ["ComfyUI_00001_.png", "ComfyUI_00002_.png"]


async def test_node_times_slow_down_execution(
    comfyui_emulator_factory: Callable[..., EmulatorThread], session: aiohttp.ClientSession
) -> None:
    emulator = comfyui_emulator_factory(node_time=0.05, node_times={"SaveImage": 0.3})
    ws = await session.ws_connect(f"{emulator.url}/ws?clientId=t")
    started = asyncio.get_running_loop().time()
    done = await submit(session, emulator, empty_save(), client_id="t")
    await messages_until_end(ws, done["prompt_id"])
    assert asyncio.get_running_loop().time() - started >= 0.35


def test_emulator_thread_is_a_context_manager_with_passthrough_properties() -> None:
    with EmulatorThread() as emulator:
        assert emulator.url == f"http://{emulator.address}"
        assert httpx.get(f"{emulator.url}/api/features").json() == {
            "supports_preview_metadata": True,
            "max_upload_size": 104857600,
        }
        reply = httpx.post(f"{emulator.url}/prompt", json={"prompt": {}, "client_id": "x"})
        assert reply.status_code == 400
        assert emulator.prompts_received == [{"prompt": {}, "client_id": "x"}]
        base_dir = emulator.base_dir
        assert emulator.input_dir.is_dir() and emulator.temp_dir.is_dir()
    assert not base_dir.exists()  # an own temporary base_dir is removed on stop


def test_run_emulator_serves_until_sigterm() -> None:
    script = (
        "from comfyui_server.core.testing.emulator import run_emulator\n"
        "run_emulator(port=0, on_started=lambda emu: print(emu.url, flush=True))\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert httpx.get(f"{url}/system_stats").json()["system"]["comfyui_version"] == "0.3.64"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
