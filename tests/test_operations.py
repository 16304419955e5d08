"""Operating the real process: JSON logs, SIGTERM with tasks running, restart."""

import json
import signal

import httpx
from comfyui_server.core.testing.server import ServerProcess
from fixtures_app import wait_final, wait_until


def env_for(emulator, tmp_path, **extra):
    return {
        "COMFYUI_ENDPOINTS": emulator.address,
        "DATA_DIR": str(tmp_path / "data"),
        "COMFYUI_CLEANUP": "off",
        "URL_ALLOWLIST": "127.0.0.1",
        **extra,
    }


def test_json_logs_carry_the_task_id(comfyui_emulator, tmp_path):
    with ServerProcess(env_for(comfyui_emulator, tmp_path, LOG_FORMAT="json")) as server:
        ids = [
            httpx.post(
                server.api,
                params={"wait": 10},
                json={"service_type": "blank", "params": {"color": i}},
            ).json()["id"]
            for i in range(2)
        ]
    lines = [json.loads(line) for line in server.log_lines if line.startswith("{")]
    assert lines, server.log_lines
    assert len(lines) == len([line for line in server.log_lines if line.strip()])
    for task_id in ids:
        about = [line for line in lines if f"task {task_id} " in line["message"]]
        assert about and all(line["task_id"] == task_id for line in about)


def test_sigterm_with_tasks_running_loses_none(comfyui_emulator_factory, tmp_path):
    emulator = comfyui_emulator_factory(node_time=0.05)
    env = env_for(emulator, tmp_path, MAX_IN_FLIGHT_PER_ENDPOINT="4")
    server = ServerProcess(env).start()
    ids = [
        httpx.post(server.api, json={"service_type": "blank", "params": {"color": i}}).json()["id"]
        for i in range(50)
    ]
    wait_until(lambda: len(emulator.prompts_received) >= 5)
    server.signal(signal.SIGTERM)
    # uvicorn re-raises the signal once it has shut down cleanly, so -SIGTERM is expected
    assert server.wait(30) in (0, -signal.SIGTERM)
    assert any("Application shutdown complete" in line for line in server.log_lines)
    unfinished_at_stop = len(ids) - len(emulator.history)
    assert unfinished_at_stop > 0, "the stop came too late to prove anything"
    with ServerProcess(env, port=server.port) as again:
        records = [wait_final(again.api, task_id, timeout=60) for task_id in ids]
    assert {r["status"] for r in records} == {"completed"}, {r["error"] for r in records}
    # each ran exactly once on ComfyUI: prompts in flight at the stop were watched again,
    # not sent again
    prompt_ids = [p["prompt_id"] for p in emulator.prompts_received]
    assert len(prompt_ids) == len(ids)
    assert sorted(prompt_ids) == sorted(r["comfyui_task_id"] for r in records)
