"""Adds the `swatch` workflow. Its colour comes as "#rrggbb" text, which ComfyUI's EmptyImage
wants as an integer: logic a spec cannot express, so this plugin builds its own prompt."""

from importlib.resources import files

from comfyui_server.core import Workflow, hookimpl

WORKFLOW = Workflow.from_files(files(__package__), "swatch")


@hookimpl
def register_workflows(register):
    register(WORKFLOW)


@hookimpl
def build_prompt(workflow, params):
    if workflow.name != WORKFLOW.name:
        return None  # not ours: the next builder (the spec-driven one) handles it
    prompt = workflow.apply_params({k: v for k, v in params.items() if k != "hex"})
    prompt["1"]["inputs"]["color"] = int(params["hex"].lstrip("#"), 16)
    return prompt
