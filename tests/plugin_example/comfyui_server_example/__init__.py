"""Adds the `swatch` workflow. Its colour comes as "#rrggbb" text and its shape as an
aspect ratio, which ComfyUI's EmptyImage wants as an integer colour, a width and a height:
logic a spec cannot express, so this plugin builds its own prompt."""

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
    prompt = workflow.apply_params(params)
    across, down = (int(n) for n in params["aspect_ratio"].split(":"))
    prompt["1"]["inputs"].update(
        color=int(params["hex"].lstrip("#"), 16),
        width=params["size"],
        height=max(1, params["size"] * down // across),
    )
    return prompt
