"""A workflow is data: a ComfyUI API-format export plus a parameter spec.

Values are set into the parsed graph, never pasted into JSON text, so no parameter value can
add, remove or rewire a node. Without a spec, the seed's `$name` placeholders inside string
values are the parameters (required strings), substituted inside that one string only.
"""

from __future__ import annotations

import json
import math
import re
import string
import tomllib
from collections.abc import Callable, Iterable, Mapping
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import msgspec

from .errors import ComfyServerError, RequestError

ParamType = Literal["string", "integer", "number", "boolean", "image"]
_PLACEHOLDER = re.compile(
    r"\$(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\})"
)


class Target(msgspec.Struct, frozen=True):
    node_id: str
    input: str

    def __str__(self) -> str:
        return f"{self.node_id}.{self.input}"


class ParamSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    type: ParamType = "string"
    targets: tuple[Target, ...] = ()
    default: Any = None
    required: bool = True
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    pattern: str | None = None
    """A regular expression a string value must match in full."""
    description: str = ""
    placeholder: bool = False
    """True for the seed's `$name` form: the value replaces `$name` inside the target string."""


class SpecFile(msgspec.Struct, forbid_unknown_fields=True):
    """The TOML file's shape; unknown keys are errors so a typo cannot pass silently."""

    class Param(msgspec.Struct, forbid_unknown_fields=True):
        type: ParamType = "string"
        target: str | list[str] = msgspec.field(default_factory=list)
        default: Any = None
        minimum: float | None = None
        maximum: float | None = None
        choices: list[Any] | None = None
        pattern: str | None = None
        description: str = ""

    class Outputs(msgspec.Struct, forbid_unknown_fields=True):
        nodes: list[str] | None = None

    description: str = ""
    timeout: float | None = None
    params: dict[str, Param] = msgspec.field(default_factory=dict)
    outputs: Outputs = msgspec.field(default_factory=Outputs)


class WorkflowError(ComfyServerError, ValueError):
    """A workflow's files are wrong; the message names the file and the key."""


class Workflow(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    graph: dict[str, Any]
    params: dict[str, ParamSpec]
    description: str = ""
    output_nodes: tuple[str, ...] | None = None
    timeout: float | None = None
    """Seconds a task may take from submission before it fails with TIMEOUT."""
    source: str = ""
    """Where it came from (a file path or a package), for messages."""

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def from_files(cls, folder: Traversable | Path | str, name: str) -> Workflow:
        """Load `NAME.json` and, when present, `NAME.toml` from a folder or package."""
        folder = Path(folder) if isinstance(folder, str) else folder
        json_file = folder / f"{name}.json"
        toml_file = folder / f"{name}.toml"
        try:
            graph = json.loads(json_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WorkflowError(f"{json_file}: cannot read the workflow export: {exc}") from exc
        spec = None
        if toml_file.is_file():
            try:
                spec = tomllib.loads(toml_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise WorkflowError(f"{toml_file}: {exc}") from exc
        _check_graph(graph, str(json_file))  # graph errors name the JSON, spec errors the TOML
        where = f"{toml_file}" if spec is not None else str(json_file)
        return cls.from_data(name, graph, spec, source=where)

    @classmethod
    def from_data(
        cls, name: str, graph: Any, spec: Mapping[str, Any] | None = None, *, source: str = ""
    ) -> Workflow:
        where = source or name
        _check_graph(graph, where)
        if spec is None:
            return cls(name=name, graph=graph, params=_placeholder_params(graph), source=source)
        try:
            parsed = msgspec.convert(spec, SpecFile)
        except msgspec.ValidationError as exc:
            raise WorkflowError(f"{where}: spec: {exc}") from None
        params = {
            pname: _param_from_spec(pname, p, graph, where) for pname, p in parsed.params.items()
        }
        outputs = parsed.outputs.nodes
        if parsed.timeout is not None and parsed.timeout <= 0:
            raise WorkflowError(f"{where}: timeout must be a positive number of seconds")
        for node_id in outputs or ():
            if node_id not in graph:
                raise WorkflowError(f"{where}: outputs.nodes names unknown node {node_id!r}")
        return cls(
            name=name,
            graph=graph,
            params=params,
            description=parsed.description,
            output_nodes=tuple(outputs) if outputs is not None else None,
            timeout=parsed.timeout,
            source=source,
        )

    # ---- use ----------------------------------------------------------------------------

    @property
    def node_classes(self) -> frozenset[str]:
        return frozenset(node["class_type"] for node in self.graph.values())

    def validate_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Check `params` against the spec: the result has every param, defaults filled in.
        Errors name the field as `params.NAME`."""
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise RequestError(
                f"params.{unknown[0]} is not a parameter of workflow {self.name!r}; "
                f"its parameters: {', '.join(sorted(self.params)) or 'none'}",
                field=f"params.{unknown[0]}",
            )
        clean: dict[str, Any] = {}
        for name, spec in self.params.items():
            field = f"params.{name}"
            if name not in params:
                if spec.required:
                    raise RequestError(f"{field} is required", field=field)
                clean[name] = spec.default
                continue
            clean[name] = _check_value(spec, params[name], field)
        return clean

    def apply_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A fresh copy of the graph with each parameter set at its targets. The copy goes
        through JSON, which the graph is anyway: 12 us for a 14-node graph, against 83 us for
        copy.deepcopy."""
        prompt = msgspec.json.decode(msgspec.json.encode(self.graph))
        for name, spec in self.params.items():
            if name not in params:
                continue
            for target in spec.targets:
                inputs = prompt[target.node_id]["inputs"]
                if spec.placeholder:
                    inputs[target.input] = _substitute(inputs[target.input], params)
                else:
                    inputs[target.input] = params[name]
        for node in prompt.values():  # the web UI's export metadata means nothing to ComfyUI
            node.pop("_meta", None)
        return prompt


# ---- helpers ---------------------------------------------------------------------------


def _check_graph(graph: Any, where: str) -> None:
    if not isinstance(graph, dict) or not graph:
        raise WorkflowError(f"{where}: an API-format export is a non-empty JSON object")
    for node_id, node in graph.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise WorkflowError(
                f"{where}: node {node_id!r} has no class_type; export with 'Export (API)'"
            )
        if not isinstance(node.get("inputs", {}), dict):
            raise WorkflowError(f"{where}: node {node_id!r}: inputs must be an object")
        node.setdefault("inputs", {})


def _resolve_target(text: str, graph: Mapping[str, Any], where: str, param: str) -> Target:
    node_part, sep, input_name = text.rpartition(".")
    if not sep or not node_part or not input_name:
        raise WorkflowError(f"{where}: params.{param}: target {text!r} is not 'node.input'")
    if node_part in graph:
        node_id = node_part
    else:
        titled = [nid for nid, n in graph.items() if n.get("_meta", {}).get("title") == node_part]
        if len(titled) != 1:
            problem = "matches no node id or title" if not titled else "matches several titles"
            raise WorkflowError(f"{where}: params.{param}: target {text!r} {problem}")
        node_id = titled[0]
    inputs = graph[node_id]["inputs"]
    if input_name in inputs and isinstance(inputs[input_name], list):
        raise WorkflowError(
            f"{where}: params.{param}: target {text!r} is a link between nodes, not a value"
        )
    return Target(node_id, input_name)


def _param_from_spec(name: str, p: SpecFile.Param, graph: Mapping[str, Any], where: str):
    # A param without a target is validated here and used by the workflow's own
    # build_prompt (a plugin); the spec-driven builder ignores it.
    targets = [p.target] if isinstance(p.target, str) else list(p.target)
    spec = ParamSpec(
        name=name,
        type=p.type,
        targets=tuple(_resolve_target(t, graph, where, name) for t in targets),
        default=p.default,
        required=p.default is None,
        minimum=p.minimum,
        maximum=p.maximum,
        choices=tuple(p.choices) if p.choices is not None else None,
        pattern=p.pattern,
        description=p.description,
    )
    if p.pattern is not None:
        try:
            re.compile(p.pattern)
        except re.error as exc:
            raise WorkflowError(f"{where}: params.{name}.pattern: {exc}") from None
    if p.default is not None:
        try:
            _check_value(spec, p.default, f"params.{name}.default")
        except RequestError as exc:
            raise WorkflowError(f"{where}: {exc.message}") from None
    return spec


def _placeholder_params(graph: Mapping[str, Any]) -> dict[str, ParamSpec]:
    found: dict[str, list[Target]] = {}
    for node_id, node in graph.items():
        for input_name, value in node["inputs"].items():
            if isinstance(value, str):
                for m in _PLACEHOLDER.finditer(value):
                    pname = m.group("name") or m.group("braced")
                    targets = found.setdefault(pname, [])
                    if Target(node_id, input_name) not in targets:
                        targets.append(Target(node_id, input_name))
    return {
        n: ParamSpec(name=n, targets=tuple(t), placeholder=True) for n, t in sorted(found.items())
    }


def _substitute(template: str, params: Mapping[str, Any]) -> str:
    return string.Template(template).safe_substitute({k: str(v) for k, v in params.items()})


_TYPE_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "string": (lambda v: isinstance(v, str), "a string"),
    "image": (lambda v: isinstance(v, str), "a string (base64, data URL or http(s) URL)"),
    "boolean": (lambda v: isinstance(v, bool), "true or false"),
    "integer": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "number": (
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
        "a number",
    ),
}


def _check_value(spec: ParamSpec, value: Any, field: str) -> Any:
    check, expected = _TYPE_CHECKS[spec.type]
    if not check(value):
        raise RequestError(
            f"{field} must be {expected}, got {type(value).__name__}", field=field, status_code=422
        )
    if spec.choices is not None and value not in spec.choices:
        raise RequestError(
            f"{field} must be one of {list(spec.choices)!r}, got {value!r}",
            field=field,
            status_code=422,
        )
    if spec.pattern is not None and not re.fullmatch(spec.pattern, value):
        raise RequestError(f"{field} must match {spec.pattern!r}", field=field, status_code=422)
    if spec.minimum is not None and value < spec.minimum:
        raise RequestError(f"{field} must be >= {spec.minimum:g}", field=field, status_code=422)
    if spec.maximum is not None and value > spec.maximum:
        raise RequestError(f"{field} must be <= {spec.maximum:g}", field=field, status_code=422)
    return value


_PREFIX_INPUT = "filename_prefix"


def tag_output_prefixes(prompt: dict[str, Any], tag: str) -> None:
    """Make every saving node's file names unique to one attempt.

    ComfyUI hands out the name of a deleted newest file again and serves an identical graph
    from its cache with the old file names; a tag in the prefix avoids both. The author's
    folder and name survive: `jobs/out` becomes `jobs/out_<tag>`.
    """
    for node in prompt.values():
        value = node.get("inputs", {}).get(_PREFIX_INPUT)
        if isinstance(value, str):
            node["inputs"][_PREFIX_INPUT] = f"{value}_{tag}" if value else tag


class WorkflowRegistry:
    """Workflows by name, with who registered each, so a clash names both plugins."""

    def __init__(self) -> None:
        self._workflows: dict[str, Workflow] = {}
        self._owners: dict[str, str] = {}

    def register(self, workflow: Workflow, owner: str) -> None:
        if not isinstance(workflow, Workflow):
            raise TypeError(f"plugin {owner!r} registered {workflow!r}, not a Workflow")
        if workflow.name in self._workflows:
            raise WorkflowError(
                f"workflow {workflow.name!r} is registered by both {self._owners[workflow.name]!r}"
                f" and {owner!r}; disable one of them (DISABLED_PLUGINS) to replace it"
            )
        self._workflows[workflow.name] = workflow
        self._owners[workflow.name] = owner

    def get(self, name: str) -> Workflow | None:
        return self._workflows.get(name)

    def owner(self, name: str) -> str:
        return self._owners[name]

    def __iter__(self):
        return iter(sorted(self._workflows.values(), key=lambda w: w.name))

    def __len__(self) -> int:
        return len(self._workflows)

    def names(self) -> list[str]:
        return sorted(self._workflows)


def load_folder(folder: Path) -> Iterable[Workflow]:
    """Every `NAME.json` in a drop-in folder, with its `NAME.toml` when present."""
    for json_file in sorted(folder.glob("*.json")):
        yield Workflow.from_files(folder, json_file.stem)


def collect_workflows(pm: Any, settings: Any) -> WorkflowRegistry:
    """Ask each plugin for its workflows, one implementation at a time so a duplicate name
    can be reported with both owners, then add the drop-in folder."""
    registry = WorkflowRegistry()
    for impl in reversed(pm.hook.register_workflows.get_hookimpls()):
        kwargs = {
            "register": lambda w, o=impl.plugin_name: registry.register(w, o),
            "settings": settings,
        }
        impl.function(*(kwargs[a] for a in impl.argnames))
    if settings.workflows_dir:
        folder = Path(settings.workflows_dir)
        if not folder.is_dir():
            raise WorkflowError(f"WORKFLOWS_DIR: {folder} is not a folder")
        for workflow in load_folder(folder):
            registry.register(workflow, "WORKFLOWS_DIR")
    return registry
