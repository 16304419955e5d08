"""The seed's `img2img` workflow, kept under its name so seed clients keep working."""

from importlib.resources import files

from comfyui_server.core import Workflow, hookimpl


@hookimpl
def register_workflows(register):
    register(Workflow.from_files(files(__package__), "img2img"))
