"""Tools for workflow authors: draft a spec from an export, and check workflows against
the node classes each endpoint offers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from .comfyui.client import endpoint_name, endpoint_url
from .workflows import Workflow

_TOML_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}
_IMAGE_LOADERS = {"LoadImage", "LoadImageMask"}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def _param_name(node_id: str, input_name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_]", "_", input_name)
    name = base if base not in taken else f"{base}_{re.sub(r'[^A-Za-z0-9_]', '_', node_id)}"
    taken.add(name)
    return name


def draft_spec(graph: Mapping[str, Any], *, active: bool = False) -> str:
    """A TOML spec listing every literal input of `graph` as a candidate param.

    Candidates are commented out, so the user uncomments only what clients may set;
    `active=True` writes them all live (useful to see everything that can be set).
    """
    lines = [
        'description = ""',
        "# timeout = 600  # seconds from submission before the task fails with TIMEOUT",
        "",
        "# Every literal input of the export is a candidate parameter. Uncomment the ones",
        "# clients may set; remove `default` to make a param required.",
    ]
    taken: set[str] = set()
    prefix = "" if active else "# "
    for node_id, node in graph.items():
        class_type = node.get("class_type", "?")
        title = node.get("_meta", {}).get("title")
        for input_name, value in (node.get("inputs") or {}).items():
            if isinstance(value, list) or type(value) not in _TOML_TYPES:
                continue  # a link between nodes, or nothing a param can hold
            name = _param_name(node_id, input_name, taken)
            is_image = class_type in _IMAGE_LOADERS and input_name == "image"
            where = f'node "{node_id}" ({class_type}{f", {title!r}" if title else ""})'
            lines += [
                "",
                f"{prefix}[params.{name}]  # {where}, input {input_name!r}",
                f'{prefix}type = "{"image" if is_image else _TOML_TYPES[type(value)]}"',
                f'{prefix}target = "{node_id}.{input_name}"',
            ]
            if not is_image:
                lines.append(f"{prefix}default = {_toml_value(value)}")
    outputs = [nid for nid, n in graph.items() if "filename_prefix" in (n.get("inputs") or {})]
    if outputs:
        lines += [
            "",
            "# Keep only these nodes' files (default: every output file):",
            "# [outputs]",
            f"# nodes = {json.dumps(outputs)}",
        ]
    return "\n".join(lines) + "\n"


async def endpoint_node_classes(
    specs: Iterable[str], http: httpx.AsyncClient
) -> dict[str, frozenset[str] | str]:
    """Node classes per endpoint, or the error that prevented knowing them."""
    found: dict[str, frozenset[str] | str] = {}
    for spec in specs:
        url = endpoint_url(spec)
        try:
            response = await http.get(url + "/object_info")
            response.raise_for_status()
            found[endpoint_name(url)] = frozenset(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            found[endpoint_name(url)] = f"unreachable: {exc}"
    return found


def check_matrix(
    workflows: Iterable[Workflow], endpoints: Mapping[str, frozenset[str] | str]
) -> dict[str, dict[str, str]]:
    """workflow -> endpoint -> "ok", "missing: A, B", or why the endpoint is unknown."""
    matrix: dict[str, dict[str, str]] = {}
    for workflow in workflows:
        row = matrix[workflow.name] = {}
        for name, classes in endpoints.items():
            if isinstance(classes, str):
                row[name] = classes
            else:
                missing = sorted(workflow.node_classes - classes)
                row[name] = "ok" if not missing else "missing: " + ", ".join(missing)
    return matrix
