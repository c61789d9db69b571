"""Build, compile, fit and evaluate one registered model (TensorFlow/Keras imported lazily).

Models come from their Keras JSON config (or a ``.keras`` file) and always load in safe mode:
nothing from the wire is executed. Fit and evaluate keyword arguments are an allow-list.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from functions.train.dataset import Dataset
from kafkaml.errors import KmlError, Unavailable, ValidationFailed
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


class FrameworkImport:
    """TensorFlow and Keras imported on a thread while the function starts, and the readiness
    probe unready until they are: the import takes ~2.7 s here, and Knative's readiness gate
    hides it instead of the first control message paying it (measured 3.9 s from event to the
    first epoch, 2.7 s of it the import)."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._error: BaseException | None = None
        self.seconds: float | None = None

    def start(self) -> FrameworkImport:
        threading.Thread(target=self._run, name="kml-import-tensorflow", daemon=True).start()
        return self

    def _run(self) -> None:
        started = time.monotonic()
        try:
            import keras  # noqa: F401  (imports TensorFlow, its backend)
            import tensorflow  # noqa: F401
        except BaseException as e:  # a broken install: readiness says so, forever
            self._error = e
        finally:
            self.seconds = time.monotonic() - started
            self._done.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        return self._done.wait(timeout_s)

    def check(self) -> None:
        """Raises (503) until TensorFlow is imported, or naming why it cannot be."""
        if not self._done.is_set():
            raise Unavailable("the train function is still importing TensorFlow")
        if self._error is not None:
            raise Unavailable(f"TensorFlow cannot be imported: {_short(self._error)}")


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


STEPS_PER_EXECUTION = 32
"""Most training steps one call into TensorFlow runs: Keras spends ~0.8 ms of fixed overhead
per call, more than a small model's step; 32 steps per call halved a 100-64-10 MLP's epoch
(200,000 x 100 float32, batch 32). Per-epoch metrics and callbacks are unchanged by it."""


def steps_per_execution(records: int, batch_size: int) -> int:
    """Steps per TensorFlow call for ``records`` in batches of ``batch_size``: up to
    :data:`STEPS_PER_EXECUTION`, never more than an epoch has."""
    steps = math.ceil(max(records, 1) / max(batch_size, 1))
    return max(1, min(STEPS_PER_EXECUTION, steps))


def compile_model(
    model: Any,
    name: str,
    spec: dict[str, Any],
    learning_rate: float | None,
    steps: int = 1,
) -> None:
    """Compile with the record's optimizer, loss and metrics; ``steps`` training steps run per
    call into TensorFlow (see :func:`steps_per_execution`)."""
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
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics, steps_per_execution=steps)
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
    batch_size, epochs = deployment.batch_size, deployment.epochs
    steps = steps_per_execution(len(data.train), batch_size)
    compile_model(model, name, spec, deployment.learning_rate, steps)
    if problems := label_problems(model, name, spec, data):
        raise ModelFailed(f"model {name}: labels outside its classes: {problems[0]}", problems)

    class Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            on_epoch(epoch + 1, {k: float(v) for k, v in (logs or {}).items()})

    # NumPy arrays straight into fit: measured faster here than a tf.data pipeline with
    # prefetch (4.3 s against 4.6-6.9 s an epoch), and the data is in memory already.
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
