"""The real server on each backend: tasks submitted over HTTP run to the end, and a second
server on the same database (a restart, or another replica) sees them."""

from __future__ import annotations

import httpx
from fixtures_app import wait_final

BLANK = {"width": 8, "height": 8, "color": 0x336699}


def submit(server, client_task_id: str) -> httpx.Response:
    body = {"service_type": "blank", "client_task_id": client_task_id, "params": BLANK}
    return httpx.post(server.api, json=body, timeout=10)


def test_tasks_run_and_outlive_the_server(db_url, comfyui_emulator, server_factory):
    env = {"DATABASE_URL": db_url}
    first = server_factory([comfyui_emulator], env)
    accepted = [submit(first, f"c-{n}").json() for n in range(6)]
    records = [wait_final(first.api, task["id"]) for task in accepted]
    assert [r["status"] for r in records] == ["completed"] * 6
    assert len({r["id"] for r in records}) == 6
    first.stop()

    second = server_factory([comfyui_emulator], env)
    for record in records:
        again = httpx.get(f"{second.api}/tasks/{record['id']}").json()
        for key in ("status", "client_task_id", "comfyui_task_id", "s3_key", "finished_at"):
            assert again[key] == record[key], key
        # links are made afresh by whichever server answers
        assert [{**o, "url": None} for o in again["outputs"]] == [
            {**o, "url": None} for o in record["outputs"]
        ]
    repeated = submit(second, "c-0")
    assert repeated.status_code == 200, repeated.text
    assert repeated.json()["id"] == records[0]["id"]
    flow = httpx.get(f"{second.api}/tasks/{records[0]['id']}/flow").json()
    assert [step["status"] for step in flow][-1] == "completed"
