"""Field checks of the register events' data; each collects EVERY problem into one 422.

The configuration, deployment and inference events carry the user's fields of their records,
so their checks are the records' own (``storage.records``, ``storage.specs``). A model event
differs from the stored model record (it carries the Keras JSON or a Base64 ``.keras`` file),
so its check is here.
"""

from __future__ import annotations

from typing import Any

from storage.records import (
    COMPILE_FIELDS,
    Configuration,
    int_problem,
    name_problem,
    raise_if,
    require_object,
    unknown_problems,
)
from storage.specs import Deployment, InferenceSpec

__all__ = [
    "check_configuration",
    "check_deployment",
    "check_inference",
    "check_model",
    "raise_if",
    "require_object",
]

MODEL_FIELDS = ("name", "description", "version", "keras_json", "keras_b64", "compile")
"""The keys of a ``kml.model.register`` body."""

check_configuration = Configuration.problems
check_deployment = Deployment.problems
check_inference = InferenceSpec.problems


def check_model(data: dict[str, Any]) -> list[str]:
    """Problems of a ``kml.model.register`` body (Keras content is checked separately)."""
    problems = unknown_problems(data, MODEL_FIELDS)
    if p := name_problem("name", data.get("name")):
        problems.append(p)
    if "description" in data and not isinstance(data["description"], str):
        problems.append("description: must be a string")
    if data.get("version") is not None and (p := int_problem("version", data["version"], 1)):
        problems.append(p)
    has_json, has_file = data.get("keras_json") is not None, data.get("keras_b64") is not None
    if has_json == has_file:
        problems.append("keras_json / keras_b64: exactly one is required")
    if has_json and not isinstance(data["keras_json"], (str, dict)):
        problems.append("keras_json: must be the string model.to_json() gives (or that object)")
    if has_file and not isinstance(data["keras_b64"], str):
        problems.append("keras_b64: must be a Base64 string of a .keras file")
    spec = data.get("compile")
    if spec is None and has_json:
        problems.append("compile: required ({optimizer, loss, metrics})")
    elif spec is not None:
        if not isinstance(spec, dict):
            problems.append("compile: must be an object {optimizer, loss, metrics}")
        else:
            problems.extend(unknown_problems(spec, COMPILE_FIELDS, "compile."))
            if spec.get("loss") is None:
                problems.append("compile.loss: required")
            if "metrics" in spec and not isinstance(spec["metrics"], list):
                problems.append("compile.metrics: must be a list")
    return problems
