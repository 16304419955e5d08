"""Build prompts from a workflow's parameter spec: the path for every workflow that needs no
Python. A workflow plugin that needs logic implements `build_prompt` itself and wins, since
this one is trylast."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from comfyui_server.core import Workflow, hookimpl


@hookimpl(trylast=True)
def build_prompt(workflow: Workflow, params: Mapping[str, Any]) -> dict[str, Any]:
    return workflow.apply_params(params)
