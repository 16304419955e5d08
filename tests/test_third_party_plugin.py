"""tests/plugin_example is installed like any pip package: its workflow and its own
build_prompt run end to end with no change to core."""

import httpx
from fixtures_app import wait_final


def test_pip_installed_workflow_runs_with_its_own_prompt_builder(comfyui_emulator, server_factory):
    server = server_factory([comfyui_emulator])
    names = [w["name"] for w in httpx.get(server.api + "/workflows").json()]
    assert "swatch" in names
    task = httpx.post(
        server.api, json={"service_type": "swatch", "params": {"hex": "#ff8800", "size": 4}}
    ).json()
    record = wait_final(server.api, task["id"])
    assert record["status"] == "completed", record
    (prompt,) = [p for p in comfyui_emulator.prompts_received if p.get("prompt_id") == record["comfyui_task_id"]]
    assert prompt["prompt"]["1"]["inputs"]["color"] == 0xFF8800  # built by the plugin
    assert prompt["prompt"]["1"]["inputs"]["width"] == 4  # set by the spec


def test_pattern_in_the_plugins_spec_rejects_a_bad_colour(comfyui_emulator, server_factory):
    server = server_factory([comfyui_emulator])
    response = httpx.post(server.api, json={"service_type": "swatch", "params": {"hex": "orange"}})
    assert response.status_code == 422
    assert response.json()["extra"][0]["key"] == "params.hex"
