"""The "try it" form: HTML controls generated from a workflow's parameter spec, and the
posted form turned back into the params the API would take.

Image params arrive as multipart file parts and become data URLs here, so the engine
validates them exactly as it validates a JSON submission.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import msgspec
from comfyui_server.core import Workflow
from comfyui_server.core.workflows import ParamSpec
from litestar.datastructures import FormMultiDict, UploadFile

URL_SUFFIX = "__url"
"""An image param may also be given as a URL, in the text field `<name>__url`."""


class Control(msgspec.Struct, frozen=True, kw_only=True):
    """One form control, ready for the template."""

    name: str
    kind: str
    """number, select, checkbox, image, textarea or text."""
    label: str
    description: str
    required: bool
    value: Any = None
    minimum: float | None = None
    maximum: float | None = None
    step: str | None = None
    options: tuple[tuple[str, str], ...] = ()
    """(value, label) pairs of a select."""


def _kind(spec: ParamSpec) -> str:
    if spec.choices:
        return "select"
    return {
        "integer": "number",
        "number": "number",
        "boolean": "checkbox",
        "image": "image",
    }.get(spec.type, "textarea" if spec.type == "string" else "text")


def controls(workflow: Workflow, values: dict[str, Any] | None = None) -> list[Control]:
    """The form's controls, filled with `values` (a re-shown form) or the defaults."""
    values = values or {}
    result = []
    for spec in workflow.params.values():
        kind = _kind(spec)
        if kind == "image":
            value: Any = values.get(spec.name + URL_SUFFIX, "")
        elif spec.name in values:
            value = values[spec.name]
        elif kind == "checkbox":
            value = bool(spec.default)
        else:
            value = "" if spec.default is None else str(spec.default)
        result.append(
            Control(
                name=spec.name,
                kind=kind,
                label=spec.name.replace("_", " "),
                description=spec.description,
                required=spec.required and kind not in ("checkbox", "image"),
                value=value,
                minimum=spec.minimum,
                maximum=spec.maximum,
                step="1" if spec.type == "integer" else "any",
                options=tuple((str(c), str(c)) for c in spec.choices or ()),
            )
        )
    return result


async def _image_value(name: str, upload: Any, url: str, max_bytes: int) -> str | None:
    """A data URL of the uploaded file, else the URL typed beside it, else None."""
    if isinstance(upload, UploadFile) and upload.filename:
        data = await upload.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ValueError(f"the file is larger than the {max_bytes} byte limit")
        if data:
            encoded = await asyncio.to_thread(base64.b64encode, data)
            kind = upload.content_type or "application/octet-stream"
            return f"data:{kind};base64,{encoded.decode()}"
    return url.strip() or None


async def form_params(
    workflow: Workflow, form: FormMultiDict, max_image_bytes: int
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """(params for `engine.submit`, the values to re-show the form with, errors by param).

    Empty fields are left out, so the spec's default applies (or "required" is reported by
    the engine, in the same words as the API's).
    """
    params: dict[str, Any] = {}
    shown: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for spec in workflow.params.values():
        name = spec.name
        if spec.type == "image":
            url = str(form.get(name + URL_SUFFIX) or "")
            shown[name + URL_SUFFIX] = url
            try:
                value = await _image_value(name, form.get(name), url, max_image_bytes)
            except ValueError as exc:
                errors[name] = str(exc)
                continue
            if value is not None:
                params[name] = value
            continue
        if spec.type == "boolean" and not spec.choices:
            params[name] = shown[name] = form.get(name) is not None
            continue
        raw = form.get(name)
        text = raw if isinstance(raw, str) else ""
        shown[name] = text
        if text == "":
            continue
        try:
            params[name] = _convert(spec, text)
        except ValueError as exc:
            errors[name] = str(exc)
    return params, shown, errors


def _convert(spec: ParamSpec, text: str) -> Any:
    if spec.choices:
        for choice in spec.choices:
            if str(choice) == text:
                return choice
        raise ValueError(f"{text!r} is not one of the choices")
    if spec.type == "integer":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
    if spec.type == "number":
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
    return text
