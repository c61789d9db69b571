"""Write a trained model's artifacts under ``runs/<run-id>/<model>/`` in the object store."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from functions.train import plots
from functions.train.training import TrainedModel
from storage.registry import Registry

log = logging.getLogger("kml.train")


def artifact_folders(models: list[dict[str, Any]]) -> list[str]:
    """One folder per model of a deployment, unique and the same on every run of it.

    A model whose name is unique among the deployment's models keeps its name; the versions of
    a name trained together are ``<name>.v<version>``; and a unique name that one of those
    would spell (a model called ``m.v1`` next to ``m@1`` and ``m@2``) is versioned too, until no
    two folders are equal: ``<name>.v<version>`` always ends in the version, so versioned
    folders never collide with each other, and a bare name never equals a versioned folder.
    """
    names = [str(m.get("name", "model")) for m in models]
    versioned = {i for i, n in enumerate(names) if names.count(n) > 1}
    while True:
        spelled = {f"{names[i]}.v{models[i].get('version')}" for i in versioned}
        clashing = {i for i, n in enumerate(names) if i not in versioned and n in spelled}
        if not clashing:
            break
        versioned |= clashing
    return [
        f"{n}.v{models[i].get('version')}" if i in versioned else n for i, n in enumerate(names)
    ]


def convert_tflite(model: Any) -> tuple[bytes | None, str | None]:
    """The model as a TFLite flatbuffer, or ``None`` and why conversion failed."""
    import tensorflow as tf

    try:
        return tf.lite.TFLiteConverter.from_keras_model(model).convert(), None
    except Exception as e:  # the converter raises many types; the reason is recorded
        lines = str(e).strip().splitlines()
        return None, f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


def save_artifacts(
    registry: Registry, run_id: str, folder: str, result: TrainedModel
) -> dict[str, Any]:
    """Every artifact of one model; returns ``{"artifacts": {file: key}, "metrics": ...}``."""
    store = registry.store
    artifacts: dict[str, str] = {}

    def put(filename: str, body: bytes, content_type: str) -> None:
        key = registry.run_artifact_key(run_id, folder, filename)
        store.put(key, body, content_type=content_type)
        artifacts[filename] = key

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        result.model.save(path)
        key = registry.run_artifact_key(run_id, folder, "model.keras")
        with path.open("rb") as f:
            store.upload_file(key, f)
        artifacts["model.keras"] = key

    tflite, why = convert_tflite(result.model)
    metrics = dict(result.metrics)
    metrics["tflite"] = "converted" if tflite is not None else f"not converted: {why}"
    if tflite is not None:
        put("model.tflite", tflite, "application/octet-stream")
    else:
        log.warning(
            "tflite conversion failed",
            extra={"fields": {"run": run_id, "model": folder, "reason": why}},
        )
    if result.y_true is not None and result.y_pred is not None:
        matrix = plots.confusion_matrix(result.y_true, result.y_pred)
        metrics["confusion_matrix"] = matrix.tolist()
        put("confusion_matrix.png", plots.confusion_matrix_png(matrix, folder), "image/png")
    put("curves.png", plots.curves_png(result.history, folder), "image/png")
    put("history.json", json.dumps(result.history, indent=1).encode(), "application/json")
    put("metrics.json", json.dumps(metrics, indent=1).encode(), "application/json")
    summary = {k: v for k, v in metrics.items() if k != "confusion_matrix"}
    return {
        "artifacts": artifacts,
        "metrics": summary,
        "tflite_error": why if tflite is None else None,
    }
