"""Two model-free workflows, `blank` and `invert`, that run on any ComfyUI and on the
emulator: the quickest way to see a task go through end to end."""

from importlib.resources import files

from comfyui_server.core import Workflow, hookimpl


@hookimpl
def register_workflows(register):
    for name in ("blank", "invert"):
        register(Workflow.from_files(files(__package__), name))
