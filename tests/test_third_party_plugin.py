"""tests/plugin_example is installed like any pip package: its workflow and its own
build_prompt run end to end with no change to core."""

import httpx
from fixtures_app import wait_final


def test_pip_installed_workflow_runs_with_its_own_prompt_builder(comfyui_emulator, server_factory):
    server = server_factory([comfyui_emulator])
    names = [w["name"] for w in httpx.get(server.api + "/workflows").json()]
    assert "swatch" in names
    task = httpx.post(
        server.api,
        json={
            "service_type": "swatch",
            "params": {"hex": "#ff8800", "size": 32, "aspect_ratio": "16:9"},
        },
    ).json()
    record = wait_final(server.api, task["id"])
    assert record["status"] == "completed", record
    (prompt,) = [
        p
        for p in comfyui_emulator.prompts_received
        if p.get("prompt_id") == record["comfyui_task_id"]
    ]
    inputs = prompt["prompt"]["1"]["inputs"]
    assert (inputs["color"], inputs["width"], inputs["height"]) == (0xFF8800, 32, 18)


def test_the_plugins_spec_still_validates(comfyui_emulator, server_factory):
    server = server_factory([comfyui_emulator])
    for params, field in [
        ({"hex": "orange"}, "params.hex"),
        ({"hex": "#000000", "aspect_ratio": "2:1"}, "params.aspect_ratio"),
    ]:
        response = httpx.post(server.api, json={"service_type": "swatch", "params": params})
        assert response.status_code == 422
        assert response.json()["extra"][0]["key"] == field
