"""Typed per-workflow routes, `workflows new` and `workflows check`."""

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from comfyui_server.core.workflows import Workflow
from fixtures_app import wait_final

EXPORTS = sorted((Path(__file__).parent / "data" / "comfyui-protocol" / "workflows").glob("*.json"))
BIN = Path(sys.executable).parent / "comfyui-server"


def cli(*args, cwd=None, env_file=None, check=True):
    extra = ["--env-file", str(env_file)] if env_file else []
    return subprocess.run(
        [str(BIN), *extra, *args], capture_output=True, text=True, check=check, timeout=60, cwd=cwd
    )


def test_typed_route_is_documented_and_submits(comfyui_emulator, server_factory):
    server = server_factory([comfyui_emulator])
    schema = httpx.get(server.url + "/schema/openapi.json").json()
    assert "/api/v1/workflows/blank/tasks" in schema["paths"]
    blank = schema["components"]["schemas"]["BlankParams"]["properties"]
    assert blank["width"]["minimum"] == 1 and blank["width"]["default"] == 64
    response = httpx.post(server.api + "/workflows/blank/tasks", json={"params": {"width": 9}})
    assert response.status_code == 200
    assert wait_final(server.api, response.json()["id"])["status"] == "completed"
    bad = httpx.post(server.api + "/workflows/blank/tasks", json={"params": {"width": 0}})
    assert bad.status_code == 422  # a value, as on the seed route
    assert bad.json()["extra"][0]["key"] == "params.width"
    missing = httpx.post(server.api + "/workflows/invert/tasks", json={"params": {}})
    assert missing.status_code == 422
    assert missing.json()["extra"][0]["key"] == "params.image"
    shape = httpx.post(server.api + "/workflows/blank/tasks", json={"params": []})
    assert shape.status_code == 400 and shape.json()["extra"][0]["key"] == "params"


@pytest.mark.parametrize("export", EXPORTS, ids=lambda p: p.stem)
def test_workflows_new_writes_a_spec_that_loads(tmp_path, export):
    graph = json.loads(export.read_text())
    if not all(isinstance(n, dict) and "class_type" in n for n in graph.values()):
        # an invalid export is refused with a message, and nothing is written
        result = cli(
            "workflows", "new", "wf", "--from", str(export), "--dir", str(tmp_path), check=False
        )
        assert result.returncode != 0 and "class_type" in result.stderr
        return
    for flag in ([], ["--all-params"]):
        cli(
            "workflows",
            "new",
            "wf",
            "--from",
            str(export),
            "--dir",
            str(tmp_path),
            "--force",
            *flag,
        )
        assert json.loads((tmp_path / "wf.json").read_text()) == graph
        workflow = Workflow.from_files(tmp_path, "wf")
        literals = sum(
            1
            for n in graph.values()
            for v in n.get("inputs", {}).values()
            if not isinstance(v, list)
        )
        assert len(workflow.params) == (literals if flag else 0)
        text = (tmp_path / "wf.toml").read_text()
        assert len(re.findall(r"^# \[params\.|^\[params\.", text, re.M)) == literals


def test_workflows_check_shows_why_an_endpoint_cannot_run_a_workflow(
    comfyui_emulator_factory, tmp_path
):
    full = comfyui_emulator_factory()
    partial = comfyui_emulator_factory(object_info_exclude=["ImageInvert"])
    env_file = tmp_path / ".env"
    env_file.write_text(f"COMFYUI_ENDPOINTS={full.address},{partial.address}\n")
    matrix = json.loads(cli("workflows", "check", "--json", env_file=env_file).stdout)
    assert matrix["invert"] == {full.address: "ok", partial.address: "missing: ImageInvert"}
    assert matrix["blank"][partial.address] == "ok"
    assert "UNETLoader" in matrix["text2img"][full.address]
