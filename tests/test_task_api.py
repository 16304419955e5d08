"""Waiting for a task, and following it as Server-Sent Events."""

import json
import shutil
from pathlib import Path

import httpx
import pytest

PROTOCOL = Path(__file__).parent / "data" / "comfyui-protocol" / "workflows"
BLANK = {"service_type": "blank", "params": {"width": 8, "height": 8}}


def test_wait_returns_the_final_record(comfyui_emulator, server_factory):
    server = server_factory([comfyui_emulator])
    response = httpx.post(server.api, params={"wait": 10}, json=BLANK, timeout=15)
    assert response.status_code == 200
    assert response.json()["status"] == "completed"
    task_id = response.json()["id"]
    again = httpx.get(f"{server.api}/tasks/{task_id}", params={"wait": 5})
    assert again.status_code == 200 and again.json()["status"] == "completed"


def test_wait_that_runs_out_answers_202_with_the_current_record(comfyui_emulator, server_factory):
    comfyui_emulator.hang()
    server = server_factory([comfyui_emulator])
    response = httpx.post(server.api, params={"wait": 0.5}, json=BLANK, timeout=15)
    assert response.status_code == 202
    assert response.json()["status"] in ("queued", "dispatched", "running")


def test_wait_beyond_the_cap_is_a_400_naming_it(comfyui_emulator, server_factory):
    server = server_factory([comfyui_emulator], wait_up=False)
    response = httpx.get(f"{server.api}/tasks/1", params={"wait": 3600})
    assert response.status_code == 400
    assert response.json()["extra"][0]["key"] == "wait"


@pytest.fixture
def progress_workflow(tmp_path):
    """EmptyImage(batch 3) -> SaveImageWebsocket (reports progress per image) + SaveImage."""
    folder = tmp_path / "workflows"
    folder.mkdir()
    graph = json.loads((PROTOCOL / "websocket_image_batch3.json").read_text())
    graph["3"] = {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "p"}}
    (folder / "progress.json").write_text(json.dumps(graph))
    (folder / "progress.toml").write_text('[params.color]\ntype = "integer"\ntarget = "1.color"\n')
    yield folder
    shutil.rmtree(folder)


def test_event_stream_sends_progress_in_order_then_the_final_record(
    comfyui_emulator_factory, server_factory, progress_workflow
):
    emulator = comfyui_emulator_factory(node_time=0.2)
    server = server_factory([emulator], env={"WORKFLOWS_DIR": str(progress_workflow)})
    task = httpx.post(server.api, json={"service_type": "progress", "params": {"color": 7}}).json()
    events = []
    with httpx.stream("GET", f"{server.api}/tasks/{task['id']}/events", timeout=30) as stream:
        name = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    kinds = [name for name, _ in events]
    assert kinds[0] == "status" and kinds[-1] == "final"
    assert events[-1][1]["status"] == "completed"
    counted = [
        (d["node"], d["value"], d["max"])
        for n, d in events
        if n == "progress" and d["value"] is not None
    ]
    assert counted == [("2", 0, 3), ("2", 1, 3), ("2", 2, 3)]
    statuses = [d["status"] for n, d in events if n in ("status", "final")]
    assert statuses.index("running") < len(statuses) - 1
    first_progress = kinds.index("progress")
    assert kinds.index("final") > first_progress


def test_list_tasks_filters_and_pages(comfyui_emulator, server_factory):
    server = server_factory([comfyui_emulator])
    ids = [
        httpx.post(server.api, params={"wait": 10}, json={**BLANK, "params": {"color": i}}).json()[
            "id"
        ]
        for i in range(5)
    ]
    comfyui_emulator.fail_next()
    failed = httpx.post(
        server.api, params={"wait": 10}, json={**BLANK, "params": {"color": 99}}
    ).json()
    assert failed["status"] == "failed"
    first = httpx.get(server.api + "/tasks", params={"limit": 4})
    assert [t["id"] for t in first.json()] == [failed["id"], *reversed(ids)][:4]
    rest = httpx.get(
        server.api + "/tasks", params={"limit": 4, "cursor": first.headers["x-next-cursor"]}
    )
    assert [t["id"] for t in rest.json()] == list(reversed(ids))[3:]
    assert "x-next-cursor" not in rest.headers
    only_failed = httpx.get(server.api + "/tasks", params={"status": "failed"}).json()
    assert [t["id"] for t in only_failed] == [failed["id"]]
    bad = httpx.get(server.api + "/tasks", params={"status": "lost"})
    assert bad.status_code == 400 and bad.json()["extra"][0]["key"] == "status"


def test_records_carry_stage_timings(comfyui_emulator_factory, server_factory):
    emulator = comfyui_emulator_factory(node_time=0.1)
    server = server_factory([emulator])
    record = httpx.post(server.api, params={"wait": 10}, json=BLANK).json()
    timings = record["timings"]
    assert set(timings) == {"queued", "upload", "comfyui_queue", "execution", "storage"}
    assert timings["execution"] >= 0.15  # two nodes of 0.1 s
    assert all(value >= 0 for value in timings.values())


def test_a_cursor_beyond_any_task_id_is_a_400_naming_it(comfyui_emulator, server_factory):
    """Ids are 64-bit: a larger cursor is bad input, not a database overflow."""
    server = server_factory([comfyui_emulator])
    response = httpx.get(server.api + "/tasks", params={"cursor": 2**63})
    assert response.status_code == 400, response.text
    assert "cursor" in response.text
    assert httpx.get(server.url + "/ui/tasks", params={"before": 2**63}).status_code in (200, 303)
