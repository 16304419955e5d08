"""Workflows as data: specs, placeholders, and values set structurally."""

import json
from pathlib import Path

import pytest
from comfyui_server.core.errors import RequestError
from comfyui_server.core.workflows import Workflow, WorkflowError, tag_output_prefixes

SEED = Path(__file__).parent.parent / "workflows"
GRAPH = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 64, "color": 0},
        "_meta": {"title": "Canvas"},
    },
    "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of $subject, $style"}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "out/img"}},
}
SPEC = {
    "description": "test",
    "params": {
        "size": {
            "type": "integer",
            "target": ["1.width", "Canvas.height"],
            "default": 64,
            "minimum": 16,
            "maximum": 1024,
        },
        "text": {"type": "string", "target": "2.text"},
        "mode": {"type": "string", "target": "2.mode", "choices": ["a", "b"], "default": "a"},
    },
    "outputs": {"nodes": ["3"]},
}


def test_spec_sets_values_at_every_target_including_by_title():
    wf = Workflow.from_data("t", json.loads(json.dumps(GRAPH)), SPEC)
    prompt = wf.apply_params(wf.validate_params({"size": 256, "text": "hi"}))
    assert prompt["1"]["inputs"]["width"] == 256
    assert prompt["1"]["inputs"]["height"] == 256
    assert wf.output_nodes == ("3",)
    assert "_meta" not in prompt["1"]
    assert wf.graph["1"]["inputs"]["width"] == 64  # the template is not changed


INJECTION = '"}, "99": {"class_type": "SaveImage", "inputs": {}}, "x": {"a": "\\\n\u00e9\u4e2d'


def test_a_hostile_string_arrives_verbatim_and_adds_no_node():
    wf = Workflow.from_data("t", json.loads(json.dumps(GRAPH)), SPEC)
    prompt = wf.apply_params(wf.validate_params({"text": INJECTION}))
    assert prompt["2"]["inputs"]["text"] == INJECTION
    assert set(prompt) == {"1", "2", "3"}


def test_placeholders_without_a_spec_substitute_inside_the_string_only():
    wf = Workflow.from_data("t", json.loads(json.dumps(GRAPH)))
    assert set(wf.params) == {"subject", "style"}
    prompt = wf.apply_params(wf.validate_params({"subject": INJECTION, "style": "oil"}))
    assert prompt["2"]["inputs"]["text"] == f"a photo of {INJECTION}, oil"
    assert set(prompt) == {"1", "2", "3"}


def test_the_seed_workflows_load_with_their_params():
    text2img = Workflow.from_files(SEED / "text2img", "text2img")
    img2img = Workflow.from_files(SEED / "img2img", "img2img")
    assert set(text2img.params) == {"text"}
    assert {p.name: p.type for p in img2img.params.values()} == {"text": "string", "image": "image"}


@pytest.mark.parametrize(
    ("params", "field", "status"),
    [
        ({}, "params.text", 400),
        ({"text": "x", "nope": 1}, "params.nope", 400),
        ({"text": 5}, "params.text", 422),
        ({"text": "x", "size": "big"}, "params.size", 422),
        ({"text": "x", "size": True}, "params.size", 422),
        ({"text": "x", "size": 8}, "params.size", 422),
        ({"text": "x", "size": 4096}, "params.size", 422),
        ({"text": "x", "mode": "c"}, "params.mode", 422),
    ],
)
def test_bad_params_name_the_field(params, field, status):
    wf = Workflow.from_data("t", json.loads(json.dumps(GRAPH)), SPEC)
    with pytest.raises(RequestError) as info:
        wf.validate_params(params)
    assert info.value.field == field
    assert info.value.status_code == status


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"params": {"x": {"target": "9.width"}}}, "matches no node"),
        ({"params": {"x": {"target": "3.images"}}}, "is a link"),
        ({"params": {"x": {"target": "1.width", "typo": 1}}}, "typo"),
        ({"params": {"x": {"target": "1.width", "type": "integer", "default": "a"}}}, "must be"),
        ({"outputs": {"nodes": ["77"]}}, "unknown node"),
    ],
)
def test_bad_specs_fail_at_load_naming_the_key(spec, message):
    with pytest.raises(WorkflowError, match=message):
        Workflow.from_data("t", json.loads(json.dumps(GRAPH)), spec)


def test_output_prefixes_get_the_attempt_tag_and_keep_the_folder():
    prompt = json.loads(json.dumps(GRAPH))
    tag_output_prefixes(prompt, "abc123")
    assert prompt["3"]["inputs"]["filename_prefix"] == "out/img_abc123"
