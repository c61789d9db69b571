"""Build, compile, fit and evaluate one registered model (TensorFlow/Keras imported lazily).

Models come from their Keras JSON config (or a ``.keras`` file) and always load in safe mode:
nothing from the wire is executed. Fit and evaluate keyword arguments are an allow-list.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from functions.train.dataset import Dataset
from kafkaml.errors import KmlError, ValidationFailed
from storage.records import DEFAULT_OPTIMIZER, KERAS_FILE, Model
from storage.specs import Deployment

EpochCallback = Callable[[int, dict[str, float]], None]
_TF_DATA_ERRORS = frozenset({"InvalidArgumentError"})
"""What TensorFlow raises inside ``fit`` for data the model cannot take (a bad value)."""


class ModelFailed(ValidationFailed):
    """A registered model that cannot be built, compiled or fitted on this data (permanent)."""

    kind = "model_failed"


@dataclass
class TrainedModel:
    name: str
    model: Any
    history: dict[str, list[float]]
    metrics: dict[str, Any]
    classification: bool
    y_true: np.ndarray | None = None
    y_pred: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def build_model(record: Model, load_file: Callable[[str, str], None]) -> Any:
    """A Keras model from a model record: ``keras_json`` config or ``.keras`` file, safe mode."""
    import keras

    name = record.name
    try:
        if record.format == KERAS_FILE:
            with tempfile.TemporaryDirectory() as tmp:
                path = str(Path(tmp) / "model.keras")
                load_file(record.keras_file, path)
                return keras.saving.load_model(path, compile=False, safe_mode=True)
        config = record.keras_json
        config = json.loads(config) if isinstance(config, str) else config
        return keras.saving.deserialize_keras_object(config, safe_mode=True)
    except KmlError:
        raise
    except Exception as e:  # Keras raises many types for an unusable config
        raise ModelFailed(
            f"model {name}: cannot be built: {_short(e)}", [f"model {name}: {_short(e)}"]
        ) from None


def compile_model(model: Any, name: str, spec: dict[str, Any], learning_rate: float | None) -> None:
    import keras

    spec = spec or {}
    try:
        opt = spec.get("optimizer") or DEFAULT_OPTIMIZER
        opt_cfg = {"class_name": opt, "config": {}} if isinstance(opt, str) else copy.deepcopy(opt)
        if learning_rate is not None:
            opt_cfg.setdefault("config", {})["learning_rate"] = float(learning_rate)
        optimizer = keras.optimizers.get(opt_cfg)
        loss = spec.get("loss") or "mse"
        loss = keras.losses.get(loss) if isinstance(loss, dict) else loss
        metrics = list(spec.get("metrics") or [])
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    except Exception as e:
        raise ModelFailed(
            f"model {name}: compile spec rejected: {_short(e)}",
            [f"model {name}.compile: {_short(e)}"],
        ) from None


def is_classification(spec: dict[str, Any]) -> bool:
    loss = json.dumps((spec or {}).get("loss", "")).lower()
    metrics = json.dumps((spec or {}).get("metrics", [])).lower()
    return "crossentropy" in loss or "hinge" in loss or "accuracy" in metrics


def _sparse_labels(spec: dict[str, Any]) -> bool:
    """Whether the loss takes class indices (sparse categorical crossentropy)."""
    loss = json.dumps((spec or {}).get("loss", "")).lower().replace("_", "")
    return "sparsecategorical" in loss


def label_problems(model: Any, name: str, spec: dict[str, Any], data: Dataset) -> list[str]:
    """Labels a sparse categorical model cannot take: class indices outside its output units
    (TensorFlow would fail inside ``fit`` with an error that names neither field nor value)."""
    if not _sparse_labels(spec):
        return []
    shape = getattr(model, "output_shape", None)
    if not isinstance(shape, tuple) or not shape or not isinstance(shape[-1], int):
        return []  # several outputs: Keras checks them itself
    classes = shape[-1]
    problems = []
    for split in ("train", "validation", "test"):
        y = np.asarray(getattr(data, split).y)
        if not y.size:
            continue
        bad = np.unique(y[~np.isfinite(y) | (y != np.round(y)) | (y < 0) | (y >= classes)])
        if bad.size:
            shown = ", ".join(f"{v:g}" for v in bad[:10].astype(np.float64))
            problems.append(
                f"labels ({split} split): {shown} outside model {name}'s {classes} classes "
                f"(class indices 0..{classes - 1})"
            )
    return problems


def _classes(values: np.ndarray, probabilities: bool) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim > 1 and values.shape[-1] > 1:
        return values.reshape(len(values), -1).argmax(axis=1)
    flat = values.reshape(len(values))
    return (flat > 0.5).astype(np.int64) if probabilities else np.rint(flat).astype(np.int64)


def train_model(
    stored_model: dict[str, Any],
    stored_deployment: dict[str, Any],
    data: Dataset,
    on_epoch: EpochCallback,
    load_file: Callable[[str, str], None],
) -> TrainedModel:
    """Fit one model on ``data`` and evaluate it on the test split (or validation if no test)."""
    record, deployment = Model.from_dict(stored_model), Deployment.from_dict(stored_deployment)
    name = record.name
    refused = deployment.keyword_problems()  # checked when created; the record may be older
    if refused:
        raise ModelFailed(f"model {name}: deployment {deployment.id} keywords refused", refused)
    import keras

    keras.utils.set_random_seed(data.seed)
    model = build_model(record, load_file)
    spec = record.compile
    compile_model(model, name, spec, deployment.learning_rate)
    if problems := label_problems(model, name, spec, data):
        raise ModelFailed(f"model {name}: labels outside its classes: {problems[0]}", problems)
    batch_size, epochs = deployment.batch_size, deployment.epochs

    class Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            on_epoch(epoch + 1, {k: float(v) for k, v in (logs or {}).items()})

    x_train = data.train.x.astype(np.float32, copy=False)
    validation = None
    if len(data.validation):
        validation = (data.validation.x.astype(np.float32, copy=False), data.validation.y)
    started = time.monotonic()
    try:
        history = model.fit(
            x_train,
            data.train.y,
            batch_size=batch_size,
            epochs=epochs,
            shuffle=deployment.shuffle,
            validation_data=validation,
            callbacks=[Progress()],
            verbose=0,
            **deployment.fit_kwargs,
        )
    except Exception as e:  # shapes, dtypes or values that do not fit the model
        if not isinstance(e, (ValueError, TypeError)) and type(e).__name__ not in _TF_DATA_ERRORS:
            raise
        raise ModelFailed(
            f"model {name}: fit failed on this data: {_short(e)}", [f"model {name}: {_short(e)}"]
        ) from None
    fit_s = time.monotonic() - started
    hist = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    metrics: dict[str, Any] = {
        "train": {k: vs[-1] for k, vs in hist.items() if not k.startswith("val_") and vs},
        "validation": {k[4:]: vs[-1] for k, vs in hist.items() if k.startswith("val_") and vs},
        "records": data.sizes(),
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": data.seed,
        "fit_seconds": round(fit_s, 3),
    }
    held_out = data.test if len(data.test) else data.validation
    classification = is_classification(spec)
    result = TrainedModel(name, model, hist, metrics, classification)
    if len(held_out):
        x_held = held_out.x.astype(np.float32, copy=False)
        scores = model.evaluate(
            x_held,
            held_out.y,
            batch_size=batch_size,
            verbose=0,
            return_dict=True,
            **deployment.evaluate_kwargs,
        )
        metrics["test" if len(data.test) else "evaluated_on_validation"] = {
            k: float(v) for k, v in scores.items()
        }
        if classification:
            predicted = model.predict(x_held, batch_size=max(batch_size, 256), verbose=0)
            result.y_true = _classes(held_out.y, probabilities=False)
            result.y_pred = _classes(predicted, probabilities=True)
    return result
