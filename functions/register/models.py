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

__all__ = ["Checked", "Limits", "ValidatedModel", "scan_config", "validate_definition"]


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


@dataclass(frozen=True)
class Checked:
    """A definition that passed every check made without Keras: what loading it needs."""

    config: dict[str, Any]
    compile: dict[str, Any] | None
    raw: bytes | None = None
    weights: bytes | None = None


def check_definition(data: dict[str, Any], limits: Limits | None = None) -> Checked:
    """Every check that needs neither Keras nor h5py: allowlist scan, archive bounds; 422 if not.

    Cheap and quick, so a refused definition is answered before TensorFlow is even imported.
    """
    limits = limits or Limits()
    compile_spec = data.get("compile")
    compile_problems = (
        scan_config(compile_spec, "compile") if isinstance(compile_spec, dict) else []
    )
    if data.get("keras_b64") is None:
        _, config = parse_keras_json(data["keras_json"])
        problems = scan_config(config) + compile_problems
        if problems:
            raise ValidationFailed("model definition refused", problems)
        return Checked(config, compile_spec)
    raw = decode_keras_file(data["keras_b64"])
    members = archive.read_members(raw, limits)
    config = archive.parse_json_member(archive.CONFIG, members[archive.CONFIG])
    if archive.METADATA in members:
        archive.parse_json_member(archive.METADATA, members[archive.METADATA])
    if not isinstance(config, dict):
        raise ValidationFailed("model definition refused", ["keras_b64.config.json: not an object"])
    problems = scan_config(config, "keras_b64.config.json") + compile_problems
    if compile_spec is None:
        compile_spec = _compile_from_archive(config)
        if compile_spec is None:
            problems.append("compile: required (the .keras file holds no compile config)")
    if problems:
        raise ValidationFailed("model definition refused", problems)
    return Checked(config, compile_spec, raw, members.get(archive.WEIGHTS))


def load_definition(checked: Checked, limits: Limits | None = None) -> ValidatedModel:
    """Check the HDF5 weights, then load the model in Keras' safe mode, build and compile it."""
    limits = limits or Limits()
    keras = _keras()
    if checked.raw is None:
        try:
            model = keras.saving.deserialize_keras_object(checked.config, safe_mode=True)
        except Exception as e:  # Keras raises ValueError/TypeError/KeyError with the reason
            raise ValidationFailed(
                "model config does not load", [f"keras_json: {_short(e)}"]
            ) from None
        return _summarise(keras, model, checked.compile or {})
    if checked.weights is not None:
        archive.check_weights(checked.weights, limits)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        path.write_bytes(checked.raw)
        try:
            model = keras.saving.load_model(path, compile=False, safe_mode=True)
        except Exception as e:
            raise ValidationFailed(
                "the .keras file does not load", [f"keras_b64: {_short(e)}"]
            ) from None
    return _summarise(keras, model, checked.compile or {})


def validate_definition(
    data: dict[str, Any], limits: Limits | None = None
) -> tuple[ValidatedModel, bytes | None]:
    """Validate a ``kml.model.register`` body; returns the summary and the ``.keras`` bytes."""
    checked = check_definition(data, limits)
    return load_definition(checked, limits), checked.raw


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
