"""Drop-in workflows end to end: several image params, and hostile text that arrives
verbatim without changing the graph."""

import base64
import io
import json

import httpx
import pytest
from PIL import Image

TWO_IMAGES = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}, "_meta": {"title": "First"}},
    "2": {"class_type": "LoadImage", "inputs": {"image": "b.png"}, "_meta": {"title": "Second"}},
    "3": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "first"}},
    "5": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "second"}},
}
SPEC = """
[params.first]
type = "image"
target = "First.image"

[params.second]
type = "image"
target = "Second.image"

[params.label]
type = "string"
target = "5.filename_prefix"
default = "second"
"""


def png(color) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def workflows_dir(tmp_path):
    folder = tmp_path / "wf"
    folder.mkdir()
    (folder / "pair.json").write_text(json.dumps(TWO_IMAGES))
    (folder / "pair.toml").write_text(SPEC)
    return folder


def test_two_image_params_are_uploaded_and_each_used(
    comfyui_emulator, server_factory, workflows_dir
):
    server = server_factory([comfyui_emulator], env={"WORKFLOWS_DIR": str(workflows_dir)})
    record = httpx.post(
        server.api,
        params={"wait": 20},
        json={
            "service_type": "pair",
            "params": {"first": png((255, 0, 0)), "second": png((0, 0, 255))},
        },
    ).json()
    assert record["status"] == "completed", record
    colours = {}
    for output in record["outputs"]:
        image = Image.open(io.BytesIO(httpx.get(output["url"]).content)).convert("RGB")
        colours[output["node_id"]] = image.getpixel((0, 0))
    assert colours == {"4": (0, 255, 255), "5": (0, 0, 255)}  # the first inverted, the second kept


HOSTILE = '"}, "99": {"class_type": "SaveImage", "inputs": {}}, "x": {"a": "\\\n\u00e9\u4e2d$first'


def test_hostile_text_arrives_verbatim_and_the_graph_keeps_its_nodes(
    comfyui_emulator, server_factory, workflows_dir
):
    server = server_factory([comfyui_emulator], env={"WORKFLOWS_DIR": str(workflows_dir)})
    record = httpx.post(
        server.api,
        params={"wait": 20},
        json={
            "service_type": "pair",
            "params": {"first": png((1, 2, 3)), "second": png((4, 5, 6)), "label": HOSTILE},
        },
    ).json()
    (sent,) = [
        p for p in comfyui_emulator.prompts_received if p["prompt_id"] == record["comfyui_task_id"]
    ]
    assert set(sent["prompt"]) == set(TWO_IMAGES)
    # the value is set as given; only our per-attempt tag is appended to the prefix
    assert sent["prompt"]["5"]["inputs"]["filename_prefix"].startswith(HOSTILE + "_")
    assert sent["prompt"]["4"]["inputs"]["images"] == ["3", 0]  # links untouched
