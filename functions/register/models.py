"""Validate a Keras model definition without running user code: safe-mode load, build, compile.

A definition is either a Keras JSON config (``model.to_json()``) plus a compile spec, or a
``.keras`` file. Before Keras sees it, the config is scanned: Lambda layers (Python code) and
objects outside Keras (custom classes, custom functions) are refused with 422 and the reason.
Keras (and so TensorFlow) is imported lazily, on the first registration.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafkaml.errors import ValidationFailed

LAMBDA_CLASSES = {"Lambda", "TFOpLambda", "SlicingOpLambda", "__lambda__"}
_KERAS_LOCK = threading.Lock()
"""Keras building is not made for concurrent use; registrations are rare and quick."""


@dataclass(frozen=True)
class ValidatedModel:
    """What registration stores about a model besides its definition."""

    keras_json: str
    compile: dict[str, Any]
    param_count: int
    input_shape: Any
    output_shape: Any
    keras_version: str

    def summary(self) -> dict[str, Any]:
        return {
            "keras_json": self.keras_json,
            "compile": self.compile,
            "param_count": self.param_count,
            "input_shape": self.input_shape,
            "output_shape": self.output_shape,
            "keras_version": self.keras_version,
        }


def scan_config(config: Any, path: str = "keras_json") -> list[str]:
    """Every Lambda layer and non-Keras object in a Keras config, with where it is."""
    problems: list[str] = []
    if isinstance(config, dict):
        cls, module = config.get("class_name"), config.get("module")
        registered = config.get("registered_name")
        if cls in LAMBDA_CLASSES:
            problems.append(
                f"{path}: {cls} layer refused: it carries Python code, which the "
                "server never runs; use built-in layers"
            )
        elif module == "builtins" and cls == "function":
            if not isinstance(config.get("config"), str):
                problems.append(f"{path}: function object refused")
        elif isinstance(module, str) and module != "keras" and not module.startswith("keras."):
            problems.append(
                f"{path}: custom object {module}.{cls} refused: only built-in Keras "
                "objects are accepted"
            )
        elif isinstance(registered, str) and ">" in registered:
            problems.append(f"{path}: custom registered object {registered!r} refused")
        for key, value in config.items():
            problems.extend(scan_config(value, f"{path}.{key}"))
    elif isinstance(config, list):
        for i, value in enumerate(config):
            problems.extend(scan_config(value, f"{path}[{i}]"))
    return problems


def parse_keras_json(value: str | dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The config as the JSON string Keras reads and as an object; 422 if it is not one."""
    if isinstance(value, dict):
        return json.dumps(value), value
    try:
        config = json.loads(value)
    except ValueError as e:
        raise ValidationFailed("keras_json is not JSON", [f"keras_json: not JSON ({e})"]) from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValidationFailed(
            "keras_json is not a Keras model config",
            ["keras_json: expected an object with class_name and config"],
        )
    return value, config


def validate_definition(data: dict[str, Any]) -> tuple[ValidatedModel, bytes | None]:
    """Validate a ``kml.model.register`` body; returns the summary and the ``.keras`` bytes."""
    if data.get("keras_b64") is not None:
        raw = decode_keras_file(data["keras_b64"])
        return validate_keras_file(raw, data.get("compile")), raw
    _, config = parse_keras_json(data["keras_json"])
    problems = scan_config(config)
    if problems:
        raise ValidationFailed("model definition refused", problems)
    with _KERAS_LOCK:
        keras = _keras()
        try:
            model = keras.saving.deserialize_keras_object(config, safe_mode=True)
        except Exception as e:  # Keras raises ValueError/TypeError/KeyError with the reason
            raise ValidationFailed(
                "model config does not load", [f"keras_json: {_short(e)}"]
            ) from None
        return _summarise(keras, model, data["compile"]), None


def decode_keras_file(b64: str) -> bytes:
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationFailed("keras_b64 is not Base64", ["keras_b64: not valid Base64"]) from None
    if not zipfile.is_zipfile(io.BytesIO(raw)):
        raise ValidationFailed(
            "keras_b64 is not a .keras file", ["keras_b64: not a .keras (zip) archive"]
        )
    return raw


def validate_keras_file(raw: bytes, compile_spec: dict[str, Any] | None) -> ValidatedModel:
    """Scan a ``.keras`` archive's config, load it in safe mode, build and compile it."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            config = json.loads(archive.read("config.json"))
    except (KeyError, ValueError, zipfile.BadZipFile) as e:
        raise ValidationFailed(
            "keras_b64 has no readable config.json",
            [f"keras_b64: config.json missing or unreadable ({e})"],
        ) from None
    problems = scan_config(config, "keras_b64.config.json")
    if compile_spec is None:
        compile_spec = _compile_from_archive(config)
        if compile_spec is None:
            problems.append("compile: required (the .keras file holds no compile config)")
    if problems:
        raise ValidationFailed("model definition refused", problems)
    with _KERAS_LOCK:
        keras = _keras()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.keras"
            path.write_bytes(raw)
            try:
                model = keras.saving.load_model(path, compile=False, safe_mode=True)
            except Exception as e:
                raise ValidationFailed(
                    "the .keras file does not load", [f"keras_b64: {_short(e)}"]
                ) from None
        return _summarise(keras, model, compile_spec)


def _compile_from_archive(config: dict[str, Any]) -> dict[str, Any] | None:
    saved = config.get("compile_config")
    if not isinstance(saved, dict) or saved.get("loss") is None:
        return None
    return {
        "optimizer": saved.get("optimizer", "adam"),
        "loss": saved["loss"],
        "metrics": saved.get("metrics") or [],
    }


def _summarise(keras: Any, model: Any, spec: dict[str, Any]) -> ValidatedModel:
    if not model.built or not getattr(model, "inputs", None):
        raise ValidationFailed(
            "model is not built",
            ["keras_json: the model has no input shape; start it with keras.Input(shape=...)"],
        )
    spec = {
        "optimizer": spec.get("optimizer", "adam"),
        "loss": spec["loss"],
        "metrics": list(spec.get("metrics") or []),
    }
    problems = []  # the getters deserialize configs in Keras' default safe mode
    for field, getter, value in (
        ("optimizer", keras.optimizers.get, spec["optimizer"]),
        ("loss", keras.losses.get, spec["loss"]),
    ):
        try:
            getter(value)
        except Exception as e:
            problems.append(f"compile.{field}: {_short(e)}")
    for i, metric in enumerate(spec["metrics"]):
        try:
            keras.metrics.get(metric)
        except Exception as e:
            problems.append(f"compile.metrics[{i}]: {_short(e)}")
    if not problems:
        try:
            model.compile(**spec)
        except Exception as e:
            problems.append(f"compile: {_short(e)}")
    if problems:
        raise ValidationFailed("compile spec refused", problems)
    return ValidatedModel(
        keras_json=model.to_json(),
        compile=spec,
        param_count=int(model.count_params()),
        input_shape=_shapes(model.inputs),
        output_shape=_shapes(model.outputs),
        keras_version=keras.__version__,
    )


def _shapes(tensors: list[Any]) -> Any:
    shapes = [list(t.shape) for t in tensors]
    return shapes[0] if len(shapes) == 1 else shapes


def _short(e: Exception) -> str:
    """First line of an exception, bounded (Keras messages can echo whole configs)."""
    lines = str(e).strip().splitlines()
    first = lines[0] if lines else ""
    return f"{type(e).__name__}: {first[:300]}"


def _keras():
    import keras  # lazy: TensorFlow takes seconds to import

    return keras
