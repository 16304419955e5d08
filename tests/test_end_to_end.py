"""One request travels REST -> scheduler -> ComfyUI (emulated) -> storage -> record -> webhook,
over real HTTP and websockets."""

import sqlite3
from collections import Counter
from pathlib import Path

import httpx
from fixtures_app import wait_final

BLANK = {"width": 8, "height": 8, "color": 0xFF8800}


def submit(server, service_type="blank", params=None, **extra):
    body = {
        "service_type": service_type,
        "params": params if params is not None else BLANK,
        **extra,
    }
    return httpx.post(server.api, json=body, timeout=10)


def test_seed_request_completes_and_the_webhook_carries_the_record(
    comfyui_emulator_factory, server_factory, webhook_receiver
):
    emulators = [comfyui_emulator_factory(), comfyui_emulator_factory()]
    server = server_factory(emulators)
    response = submit(
        server,
        client_task_id="c-1",
        client_callback_url=webhook_receiver.url,
    )
    assert response.status_code == 200, response.text
    accepted = response.json()
    assert accepted["client_task_id"] == "c-1"
    assert accepted["status"] in ("queued", "dispatched", "running", "completed")
    assert accepted["error_code"] == 0

    (delivery,) = webhook_receiver.wait_for(1)
    record = delivery.json()
    assert record["id"] == accepted["id"]
    assert record["status"] == "completed"
    assert record["event"] == "task.completed"
    assert record["error_code"] == 0
    assert record["comfyui_task_id"]
    assert record["client_callback_url"] == webhook_receiver.url
    assert record["s3_key"] == record["outputs"][0]["key"]
    assert record["comfyui_filepath"] == record["outputs"][0]["filename"]

    # the stored bytes are the PNG the emulator wrote
    emulator = next(e for e in emulators if e.address == record["endpoint"])
    produced = (emulator.output_dir / record["comfyui_filepath"]).read_bytes()
    assert produced.startswith(b"\x89PNG")
    served = httpx.get(record["outputs"][0]["url"])
    assert served.status_code == 200
    assert served.content == produced
    stored = Path(server.settings.data_dir) / "outputs" / record["s3_key"]
    assert stored.read_bytes() == produced

    # the API agrees with the webhook
    again = httpx.get(f"{server.api}/tasks/{accepted['id']}").json()
    for key in ("status", "comfyui_task_id", "s3_key", "comfyui_filepath", "error_code", "outputs"):
        assert again[key] == record[key], key
    found = httpx.get(f"{server.api}/tasks", params={"client_task_id": "c-1"}).json()
    assert [t["id"] for t in found] == [accepted["id"]]

    # the SQLite file holds the record
    db = sqlite3.connect(Path(server.settings.data_dir) / "comfyui-server.sqlite3")
    row = db.execute(
        "SELECT status, comfyui_task_id, s3_key, error_code FROM comfyui_task WHERE id = ?",
        (accepted["id"],),
    ).fetchone()
    assert row == ("completed", record["comfyui_task_id"], record["s3_key"], 0)

    flow = httpx.get(f"{server.api}/tasks/{accepted['id']}/flow").json()
    assert [step["status"] for step in flow] == [
        "accepted",
        "queued",
        "dispatched",
        "running",
        "completed",
    ]


def test_every_output_of_a_batch_is_stored(comfyui_emulator, server_factory):
    server = server_factory([comfyui_emulator])
    task = submit(server, params={**BLANK, "batch_size": 3}).json()
    record = wait_final(server.api, task["id"])
    assert record["status"] == "completed", record
    assert len(record["outputs"]) == 3
    for output in record["outputs"]:
        produced = (comfyui_emulator.output_dir / output["filename"]).read_bytes()
        assert httpx.get(output["url"]).content == produced
        assert output["content_type"] == "image/png"
        assert output["size"] == len(produced)


def test_outputs_come_from_the_websocket_and_from_history_after_a_cached_node(
    comfyui_emulator, server_factory
):
    """A run the websocket told in full (start, each node's `executed`, success, one
    connection) needs no GET /history; when ComfyUI serves a node from its cache the server
    reads /history instead, and both ways store the prompt's files."""
    server = server_factory([comfyui_emulator])
    reads = "GET /history/{prompt_id}"
    first = wait_final(server.api, submit(server).json()["id"])
    assert first["status"] == "completed", first
    assert comfyui_emulator.requests.get(reads, 0) == 0
    # the same image again: EmptyImage comes from ComfyUI's cache (only SaveImage's
    # per-attempt prefix differs)
    second = wait_final(server.api, submit(server).json()["id"])
    assert second["status"] == "completed", second
    assert comfyui_emulator.requests.get(reads, 0) >= 1
    for record in (first, second):
        (output,) = record["outputs"]
        produced = (comfyui_emulator.output_dir / output["filename"]).read_bytes()
        assert httpx.get(output["url"]).content == produced


def test_twenty_tasks_split_over_two_endpoints_and_run_in_parallel(
    comfyui_emulator_factory, server_factory
):
    emulators = [comfyui_emulator_factory(node_time=0.1) for _ in range(2)]
    server = server_factory(emulators)
    # EmptyImage + SaveImage at 0.1 s each: 0.2 s per task, 4 s one after another
    ids = [submit(server, params={**BLANK, "color": i}).json()["id"] for i in range(20)]
    records = [wait_final(server.api, i, timeout=60) for i in ids]
    assert all(r["status"] == "completed" for r in records)
    per_endpoint = Counter(r["endpoint"] for r in records)
    assert set(per_endpoint) == {e.address for e in emulators}
    assert abs(per_endpoint[emulators[0].address] - 10) <= 2, per_endpoint
    # both endpoints worked at the same time: their busy periods overlap
    spans = {}
    for r in records:
        start, end = r["started_at"], r["finished_at"]
        lo, hi = spans.get(r["endpoint"], (start, end))
        spans[r["endpoint"]] = (min(lo, start), max(hi, end))
    (a0, a1), (b0, b1) = spans.values()
    assert max(a0, b0) < min(a1, b1)


def test_a_failing_node_fails_the_task_with_its_message(
    comfyui_emulator, server_factory, webhook_receiver
):
    server = server_factory([comfyui_emulator])
    comfyui_emulator.fail_next(message="out of luck")
    task = submit(server, client_callback_url=webhook_receiver.url).json()
    (delivery,) = webhook_receiver.wait_for(1)
    record = delivery.json()
    assert record["id"] == task["id"]
    assert record["status"] == "failed"
    assert record["event"] == "task.failed"
    assert record["error_code"] == 4
    assert "out of luck" in record["error"]


def test_same_client_task_id_returns_the_same_task_and_a_different_body_conflicts(
    comfyui_emulator, server_factory
):
    server = server_factory([comfyui_emulator])
    first = submit(server, client_task_id="dup").json()
    again = submit(server, client_task_id="dup")
    assert again.status_code == 200
    assert again.json()["id"] == first["id"]
    assert again.headers["idempotent-replay"] == "true"
    clash = submit(server, client_task_id="dup", params={**BLANK, "color": 1})
    assert clash.status_code == 409
    assert clash.json()["extra"][0]["key"] == "client_task_id"


def test_workflows_and_endpoints_are_listed(comfyui_emulator, server_factory):
    server = server_factory([comfyui_emulator])
    workflows = {w["name"]: w for w in httpx.get(server.api + "/workflows").json()}
    assert {"blank", "invert", "text2img", "img2img"} <= set(workflows)
    assert workflows["blank"]["plugin"] == "demo"
    assert {p["name"] for p in workflows["invert"]["params"]} == {"image", "width", "height"}
    (endpoint,) = httpx.get(server.api + "/endpoints").json()
    assert endpoint["name"] == comfyui_emulator.address
    assert endpoint["status"] == "up"
    assert httpx.get(server.url + "/ready").status_code == 200
    assert (
        httpx.get(server.url + "/schema/openapi.json").json()["info"]["title"] == "comfyui-server"
    )
