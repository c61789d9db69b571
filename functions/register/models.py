"""Validate a Keras model definition without running user code: allowlist, bounded read, load.

A definition is either a Keras JSON config (``model.to_json()``) plus a compile spec, or a
``.keras`` file. Before Keras sees it, every object the config (and the compile spec) names is
checked against an allowlist of built-in Keras classes and functions (``allowlist``): Lambda
layers, ``TFSMLayer``, custom classes and anything that loads files are refused with 422, the
class and its path in the config. A ``.keras`` archive is read within size caps and its HDF5
weights are checked for links and external storage first (``archive``). Only then is the model
loaded in Keras' safe mode, built and compiled. This runs in the validator's child process;
Keras (and so TensorFlow) is imported lazily, after the checks.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from functions.register import archive
from functions.register.allowlist import scan_config
from functions.register.archive import Limits
from kafkaml.errors import ValidationFailed

__all__ = ["Limits", "ValidatedModel", "scan_config", "validate_definition"]


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


def parse_keras_json(value: str | dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The config as the JSON string Keras reads and as an object; 422 if it is not one."""
    if isinstance(value, dict):
        return json.dumps(value), value
    try:
        config = json.loads(value)
    except (ValueError, RecursionError) as e:
        detail = str(e)[:200] if isinstance(e, ValueError) else "nested too deeply"
        raise ValidationFailed(
            "keras_json is not JSON", [f"keras_json: not JSON ({detail})"]
        ) from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValidationFailed(
            "keras_json is not a Keras model config",
            ["keras_json: expected an object with class_name and config"],
        )
    return value, config


def validate_definition(
    data: dict[str, Any], limits: Limits | None = None
) -> tuple[ValidatedModel, bytes | None]:
    """Validate a ``kml.model.register`` body; returns the summary and the ``.keras`` bytes."""
    limits = limits or Limits()
    compile_problems = _scan_compile(data.get("compile"))
    if data.get("keras_b64") is not None:
        raw = decode_keras_file(data["keras_b64"])
        return validate_keras_file(raw, data.get("compile"), limits, compile_problems), raw
    _, config = parse_keras_json(data["keras_json"])
    problems = scan_config(config) + compile_problems
    if problems:
        raise ValidationFailed("model definition refused", problems)
    keras = _keras()
    try:
        model = keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as e:  # Keras raises ValueError/TypeError/KeyError with the reason
        raise ValidationFailed("model config does not load", [f"keras_json: {_short(e)}"]) from None
    return _summarise(keras, model, data["compile"]), None


def _scan_compile(spec: Any) -> list[str]:
    return scan_config(spec, "compile") if isinstance(spec, dict) else []


def decode_keras_file(b64: str) -> bytes:
    """The ``.keras`` bytes of ``keras_b64``; 422 if it is not Base64 of a zip archive."""
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise ValidationFailed("keras_b64 is not Base64", ["keras_b64: not valid Base64"]) from None
    if not zipfile.is_zipfile(io.BytesIO(raw)):
        raise ValidationFailed(
            "keras_b64 is not a .keras file", ["keras_b64: not a .keras (zip) archive"]
        )
    return raw


def validate_keras_file(
    raw: bytes,
    compile_spec: dict[str, Any] | None,
    limits: Limits | None = None,
    compile_problems: list[str] | None = None,
) -> ValidatedModel:
    """Read a ``.keras`` archive within its caps, scan it, load it in safe mode, compile it."""
    limits = limits or Limits()
    members = archive.read_members(raw, limits)
    config = archive.parse_json_member(archive.CONFIG, members[archive.CONFIG])
    if archive.METADATA in members:
        archive.parse_json_member(archive.METADATA, members[archive.METADATA])
    if not isinstance(config, dict):
        raise ValidationFailed("model definition refused", ["keras_b64.config.json: not an object"])
    problems = scan_config(config, "keras_b64.config.json") + list(compile_problems or [])
    if compile_spec is None:
        compile_spec = _compile_from_archive(config)
        if compile_spec is None:
            problems.append("compile: required (the .keras file holds no compile config)")
    if problems:
        raise ValidationFailed("model definition refused", problems)
    if archive.WEIGHTS in members:
        archive.check_weights(members[archive.WEIGHTS], limits)
    del members
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
