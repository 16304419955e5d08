"""After a task, ComfyUI keeps none of its files and none of its history."""

import base64
import io

import httpx
from fixtures_app import wait_final, wait_until
from PIL import Image


def png(color: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 4), color).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_inputs_outputs_and_history_are_removed(comfyui_emulator, server_factory):
    server = server_factory([comfyui_emulator], env={"COMFYUI_CLEANUP": "filecleaner"})
    ids = [
        httpx.post(
            server.api,
            json={
                "service_type": "invert",
                "params": {"image": png((i, 2 * i, 3)), "width": 8, "height": 8},
            },
        ).json()["id"]
        for i in range(20)
    ]
    records = [wait_final(server.api, i) for i in ids]
    assert {r["status"] for r in records} == {"completed"}, [r["error"] for r in records]
    # every task really used an uploaded input and wrote an output
    assert len(comfyui_emulator.prompts_received) >= 40

    def disks_clean():
        inputs = [p for p in comfyui_emulator.input_dir.rglob("*") if p.is_file()]
        outputs = [p for p in comfyui_emulator.output_dir.rglob("*") if p.is_file()]
        return not inputs and not outputs and not comfyui_emulator.history

    wait_until(disks_clean, timeout=30)
    # the outputs are still ours, in storage
    for record in records:
        assert httpx.get(record["outputs"][0]["url"]).status_code == 200


def test_off_leaves_comfyui_alone(comfyui_emulator, server_factory):
    server = server_factory([comfyui_emulator], env={"COMFYUI_CLEANUP": "off"})
    task = httpx.post(server.api, json={"service_type": "blank", "params": {}}).json()
    record = wait_final(server.api, task["id"])
    assert (comfyui_emulator.output_dir / record["comfyui_filepath"]).is_file()
    assert record["comfyui_task_id"] in comfyui_emulator.history


def test_an_endpoint_without_the_cleaner_node_keeps_its_files(
    comfyui_emulator_factory, server_factory
):
    emulator = comfyui_emulator_factory(object_info_exclude=["Clean input and output file"])
    server = server_factory([emulator], env={"COMFYUI_CLEANUP": "filecleaner"})
    task = httpx.post(server.api, json={"service_type": "blank", "params": {}}).json()
    record = wait_final(server.api, task["id"])
    wait_until(lambda: record["comfyui_task_id"] not in emulator.history)  # history still goes
    assert (emulator.output_dir / record["comfyui_filepath"]).is_file()
