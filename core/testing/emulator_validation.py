"""POST /prompt validation with ComfyUI 0.3.64's rules and error shapes.

The checks run in the same order as ComfyUI's `validate_prompt`/`validate_inputs`, so the same
malformed input fails the same way: a KeyError for a link to a missing node becomes
`exception_during_validation`, a non-object prompt raises (and aiohttp answers 500), literal
values are converted in place (the queued and historic prompt shows the converted value).
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from typing import Any

from .emulator_nodes import OBJECT_INFO, Folders, NodeClass, input_spec

Error = dict[str, Any]
_CONVERTERS: dict[str, type] = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
NodeVerdict = tuple[bool, list[Error], str]


def full_type_name(kind: type) -> str:
    """How ComfyUI names an exception class in error payloads (`PIL.UnidentifiedImageError`)."""
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def _types_overlap(received: Any, expected: Any) -> bool:
    """ComfyUI's validate_node_input: equal, or comma-separated unions that intersect."""
    if received == expected:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    wanted = {t.strip() for t in expected.split(",")}
    return bool({t.strip() for t in received.split(",")} & wanted)


def _error(kind: str, message: str, details: str, **extra_info: Any) -> Error:
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info}


class PromptValidator:
    """Validates one prompt against the node classes the server exposes."""

    def __init__(self, classes: Mapping[str, NodeClass], folders: Folders) -> None:
        self._classes = classes
        self._folders = folders

    def validate(
        self, prompt: Any, targets: list[str] | None
    ) -> tuple[bool, Error | None, list[str], dict[str, Any]]:
        """(valid, error, outputs_to_execute, node_errors), as ComfyUI's validate_prompt."""
        outputs: list[str] = []
        for node_id in prompt:
            if "class_type" not in prompt[node_id]:
                return (
                    False,
                    self._invalid_prompt("a node is missing the class_type property", node_id),
                    [],
                    {},
                )
            class_type = prompt[node_id]["class_type"]
            if class_type not in self._classes:
                return (
                    False,
                    self._invalid_prompt(f"node {class_type} does not exist", node_id),
                    [],
                    {},
                )
            if OBJECT_INFO[class_type]["output_node"] and (targets is None or node_id in targets):
                outputs.append(node_id)
        if not outputs:
            return False, _error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}

        good: list[str] = []
        failures: list[tuple[str, list[Error]]] = []
        node_errors: dict[str, Any] = {}
        verdicts: dict[str, NodeVerdict] = {}
        for output in outputs:
            try:
                valid, reasons, _ = self._validate_node(prompt, output, verdicts)
            except Exception as ex:
                valid, reasons = (
                    False,
                    [
                        self._exception_error(
                            "exception_during_validation", "Exception when validating node", ex
                        )
                    ],
                )
                verdicts[output] = (False, reasons, output)
            if valid:
                good.append(output)
                continue
            failures.append((output, reasons))
            for node_id, (node_valid, node_reasons, _) in verdicts.items():
                # Nodes downstream of a failing node are invalid without reasons of their own.
                if node_valid or not node_reasons:
                    continue
                entry = node_errors.setdefault(
                    node_id,
                    {
                        "errors": node_reasons,
                        "dependent_outputs": [],
                        "class_type": prompt[node_id]["class_type"],
                    },
                )
                entry["dependent_outputs"].append(output)
        if not good:
            details = "\n".join(
                f"{e['message']}: {e['details']}" for _, errors in failures for e in errors
            )
            error = _error(
                "prompt_outputs_failed_validation", "Prompt outputs failed validation", details
            )
            return False, error, [], node_errors
        # ComfyUI returns a set, so independent outputs run in an arbitrary order; reverse
        # prompt order is what the recorded sessions happened to show.
        return True, None, good[::-1], node_errors

    @staticmethod
    def _invalid_prompt(reason: str, node_id: str) -> Error:
        return _error(
            "invalid_prompt", f"Cannot execute because {reason}.", f"Node ID '#{node_id}'"
        )

    @staticmethod
    def _exception_error(kind: str, message: str, ex: Exception, **extra: Any) -> Error:
        return _error(
            kind,
            message,
            str(ex),
            **extra,
            exception_type=full_type_name(type(ex)),
            traceback=traceback.format_tb(ex.__traceback__),
        )

    def _validate_node(
        self, prompt: Any, node_id: str, verdicts: dict[str, NodeVerdict]
    ) -> NodeVerdict:
        if node_id in verdicts:
            return verdicts[node_id]
        inputs = prompt[node_id]["inputs"]
        class_type = prompt[node_id]["class_type"]
        info = OBJECT_INFO[class_type]
        node_class = self._classes[class_type]
        errors: list[Error] = []
        valid = True
        declared = [*info["input"].get("required", {}), *info["input"].get("optional", {})]
        for name in declared:
            spec = input_spec(info, name)
            assert spec is not None
            input_type, category, options = spec
            config = [input_type, options]
            if name not in inputs:
                if category == "required":
                    errors.append(
                        _error(
                            "required_input_missing",
                            "Required input is missing",
                            name,
                            input_name=name,
                        )
                    )
                continue
            value = inputs[name]
            if isinstance(value, list):
                if len(value) != 2:
                    errors.append(
                        _error(
                            "bad_linked_input",
                            "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                            name,
                            input_name=name,
                            input_config=config,
                            received_value=value,
                        )
                    )
                    continue
                source_id = value[0]
                received = OBJECT_INFO[prompt[source_id]["class_type"]]["output"][value[1]]
                if not _types_overlap(received, input_type):
                    errors.append(
                        _error(
                            "return_type_mismatch",
                            "Return type mismatch between linked nodes",
                            f"{name}, received_type({received}) mismatch input_type({input_type})",
                            input_name=name,
                            input_config=config,
                            received_type=received,
                            linked_node=value,
                        )
                    )
                    continue
                try:
                    if not self._validate_node(prompt, source_id, verdicts)[0]:
                        valid = False
                except Exception as ex:
                    valid = False
                    reason = self._exception_error(
                        "exception_during_inner_validation",
                        "Exception when validating inner node",
                        ex,
                        input_name=name,
                        input_config=config,
                        exception_message=str(ex),
                        linked_node=value,
                    )
                    verdicts[source_id] = (False, [reason], source_id)
                continue
            error = self._check_literal(inputs, name, input_type, options, node_class)
            if error is not None:
                errors.append(error)
        errors.extend(self._custom_validation(inputs, node_class))
        verdict: NodeVerdict = (not errors and valid, errors, node_id)
        verdicts[node_id] = verdict
        return verdict

    @staticmethod
    def _check_literal(
        inputs: dict[str, Any],
        name: str,
        input_type: Any,
        options: dict[str, Any],
        node_class: NodeClass,
    ) -> Error | None:
        value = inputs[name]
        config = [input_type, options]
        try:
            if isinstance(value, dict) and "__value__" in value:
                value = inputs[name] = value["__value__"]
            converter = _CONVERTERS.get(input_type) if isinstance(input_type, str) else None
            if converter is not None:
                value = inputs[name] = converter(value)
        except Exception as ex:
            return _error(
                "invalid_input_type",
                f"Failed to convert an input value to a {input_type} value",
                f"{name}, {value}, {ex}",
                input_name=name,
                input_config=config,
                received_value=value,
                exception_message=str(ex),
            )
        if name in node_class.validate_inputs:
            return None
        if "min" in options and value < options["min"]:
            return _error(
                "value_smaller_than_min",
                f"Value {value} smaller than min of {options['min']}",
                name,
                input_name=name,
                input_config=config,
                received_value=value,
            )
        if "max" in options and value > options["max"]:
            return _error(
                "value_bigger_than_max",
                f"Value {value} bigger than max of {options['max']}",
                name,
                input_name=name,
                input_config=config,
                received_value=value,
            )
        if isinstance(input_type, list) and value not in input_type:
            long_list = len(input_type) > 20
            listing = f"(list of length {len(input_type)})" if long_list else str(input_type)
            return _error(
                "value_not_in_list",
                "Value not in list",
                f"{name}: '{value}' not in {listing}",
                input_name=name,
                input_config=None if long_list else config,
                received_value=value,
            )
        return None

    def _custom_validation(self, inputs: dict[str, Any], node_class: NodeClass) -> list[Error]:
        if node_class.validate is None or not all(n in inputs for n in node_class.validate_inputs):
            return []
        verdict = node_class.validate(inputs, self._folders)
        if verdict is True:
            return []
        suffix = "" if verdict is False else f" - {verdict}"
        return [
            _error(
                "custom_validation_failed",
                "Custom validation failed for node",
                f"{name}{suffix}",
                input_name=name,
            )
            for name in node_class.validate_inputs
        ]
