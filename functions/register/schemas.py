"""Field checks of the register events' data; each collects EVERY problem into one 422."""

from __future__ import annotations

import re
from typing import Any

from kafkaml.errors import ValidationFailed
from storage import registry
from storage.records import ModelRef, name_problem

MODEL_FIELDS = {"name", "description", "version", "keras_json", "keras_b64", "compile"}
COMPILE_FIELDS = {"optimizer", "loss", "metrics"}
CONFIGURATION_FIELDS = {"name", "description", "models"}
DEPLOYMENT_FIELDS = {
    "id",
    "description",
    "configuration",
    "models",
    "batch_size",
    "epochs",
    "shuffle",
    "seed",
    "learning_rate",
    "fit_kwargs",
    "evaluate_kwargs",
}
FIT_KWARGS = {
    "initial_epoch": 0,
    "validation_freq": 1,
    "steps_per_epoch": 1,
    "validation_steps": 1,
    "class_weight": None,
}
"""Whitelisted ``fit`` keywords with their minimum (``class_weight``: {class: weight})."""
EVALUATE_KWARGS = {"steps": 1}
INFERENCE_FIELDS = {*registry.INFERENCE_FIELDS, "image"}
"""The stored spec's fields, plus the image the rendered Service runs."""
INPUT_FORMATS = ("RAW", "AVRO", "JSON")
TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
INFERENCE_ID_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")
"""DNS-1035-safe once prefixed with ``kml-infer-`` (Knative Service names)."""
IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_at_least(
    problems: list[str], field: str, value: Any, minimum: int, maximum: int | None = None
) -> None:
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        problems.append(f"{field}: {value!r} must be an integer at least {minimum}{upper}")


def _unknown(problems: list[str], data: dict[str, Any], allowed: set[str], where: str = "") -> None:
    for key in sorted(set(data) - allowed):
        problems.append(f"{where}{key}: unknown field (allowed: {', '.join(sorted(allowed))})")


def require_object(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValidationFailed(
            f"{what} data must be a JSON object",
            [f"data: expected an object, got {type(data).__name__}"],
        )
    return data


def raise_if(problems: list[str], what: str) -> None:
    if problems:
        raise ValidationFailed(f"invalid {what}: {len(problems)} problem(s)", problems)


def check_model(data: dict[str, Any]) -> list[str]:
    """Problems of a ``kml.model.register`` body (Keras content is checked separately)."""
    problems: list[str] = []
    _unknown(problems, data, MODEL_FIELDS)
    if p := name_problem("name", data.get("name")):
        problems.append(p)
    if "description" in data and not isinstance(data["description"], str):
        problems.append("description: must be a string")
    if data.get("version") is not None:
        _int_at_least(problems, "version", data["version"], 1)
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
            _unknown(problems, spec, COMPILE_FIELDS, "compile.")
            if spec.get("loss") is None:
                problems.append("compile.loss: required")
            if "metrics" in spec and not isinstance(spec["metrics"], list):
                problems.append("compile.metrics: must be a list")
    return problems


def check_configuration(data: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    _unknown(problems, data, CONFIGURATION_FIELDS)
    if p := name_problem("name", data.get("name")):
        problems.append(p)
    if "description" in data and not isinstance(data["description"], str):
        problems.append("description: must be a string")
    problems.extend(_refs_problems(data.get("models"), required=True))
    return problems


def _refs_problems(refs: Any, required: bool) -> list[str]:
    if refs is None and not required:
        return []
    if not isinstance(refs, list) or not refs:
        return ["models: must be a non-empty list of model refs (name or name@version)"]
    problems = []
    for i, ref in enumerate(refs):
        try:
            ModelRef.parse(ref)
        except ValidationFailed as e:
            problems.extend(f"models[{i}]: {p}" for p in e.problems)
    return problems


def check_deployment(data: dict[str, Any]) -> list[str]:
    """Problems of a ``kml.deployment.create`` body; ``id`` may be an int (Kafka-ML style)."""
    problems: list[str] = []
    _unknown(problems, data, DEPLOYMENT_FIELDS)
    if data.get("id") is not None:
        value = str(data["id"]) if _is_int(data["id"]) else data["id"]
        if p := name_problem("id", value):
            problems.append(p)
    has_conf, has_models = data.get("configuration") is not None, data.get("models") is not None
    if has_conf == has_models:
        problems.append("configuration / models: exactly one is required")
    if has_conf and (p := name_problem("configuration", data["configuration"])):
        problems.append(p)
    if has_models:
        problems.extend(_refs_problems(data["models"], required=True))
    if "description" in data and not isinstance(data["description"], str):
        problems.append("description: must be a string")
    _int_at_least(problems, "batch_size", data.get("batch_size", 32), 1, 1_000_000)
    _int_at_least(problems, "epochs", data.get("epochs", 1), 1, 100_000)
    if not isinstance(data.get("shuffle", True), bool):
        problems.append("shuffle: must be true or false")
    if data.get("seed") is not None:
        _int_at_least(problems, "seed", data["seed"], 0, 2**32 - 1)
    lr = data.get("learning_rate")
    if lr is not None and (not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr <= 0):
        problems.append(f"learning_rate: {lr!r} must be a positive number")
    problems.extend(_kwargs_problems("fit_kwargs", data.get("fit_kwargs"), FIT_KWARGS))
    problems.extend(
        _kwargs_problems("evaluate_kwargs", data.get("evaluate_kwargs"), EVALUATE_KWARGS)
    )
    return problems


def _kwargs_problems(field: str, kwargs: Any, allowed: dict[str, int | None]) -> list[str]:
    if kwargs is None:
        return []
    if not isinstance(kwargs, dict):
        return [f"{field}: must be an object of keyword arguments"]
    problems: list[str] = []
    for key, value in kwargs.items():
        if key not in allowed:
            problems.append(f"{field}.{key}: not allowed (allowed: {', '.join(sorted(allowed))})")
        elif key == "class_weight":
            if not isinstance(value, dict) or not all(
                str(k).isdigit() and isinstance(w, (int, float)) and not isinstance(w, bool)
                for k, w in value.items()
            ):
                problems.append(f"{field}.class_weight: must map class indices to numbers")
        else:
            _int_at_least(problems, f"{field}.{key}", value, allowed[key] or 0)
    return problems


def check_inference(data: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    _unknown(problems, data, INFERENCE_FIELDS)
    if data.get("id") is not None and not (
        isinstance(data["id"], str) and INFERENCE_ID_RE.match(data["id"])
    ):
        problems.append(
            f"id: {data['id']!r} must be 1-40 lower-case letters, digits or '-' "
            "(it names a Knative Service)"
        )
    if p := name_problem("run_id", data.get("run_id")):
        problems.append(p)
    if data.get("model") is not None and (p := name_problem("model", data["model"])):
        problems.append(p)
    fmt = data.get("input_format")
    if fmt is not None and fmt not in INPUT_FORMATS:
        problems.append(f"input_format: {fmt!r} must be one of {', '.join(INPUT_FORMATS)}")
    if data.get("input_config") is not None and not isinstance(data["input_config"], dict):
        problems.append("input_config: must be an object")
    for field in ("input_topic", "output_topic"):
        value = data.get(field)
        if not isinstance(value, str) or not TOPIC_RE.match(value):
            problems.append(f"{field}: {value!r} must be a Kafka topic name")
    if data.get("input_topic") is not None and data.get("input_topic") == data.get("output_topic"):
        problems.append("output_topic: must differ from input_topic")
    lo, hi = data.get("min_scale", 0), data.get("max_scale", 5)
    _int_at_least(problems, "min_scale", lo, 0, 1000)
    _int_at_least(problems, "max_scale", hi, 1, 1000)
    if _is_int(lo) and _is_int(hi) and lo > hi:
        problems.append(f"min_scale: {lo} is above max_scale {hi}")
    _int_at_least(problems, "target_concurrency", data.get("target_concurrency", 10), 1, 1000)
    image = data.get("image")
    if image is not None and (not isinstance(image, str) or not IMAGE_RE.match(image)):
        problems.append(f"image: {image!r} is not a container image reference")
    return problems
