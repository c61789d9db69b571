"""Runs in a spawned child process (TensorFlow and LiteRT cannot share one): fits and the train
app's start, for test_fast_fit."""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np


def _data(seed: int, n: int = 1200):
    from functions.train.dataset import split

    rng = np.random.default_rng(0)
    x = rng.random((n, 8), dtype=np.float32)
    y = x[:, :3].argmax(axis=1).astype(np.uint8)
    return split(x, y, 0.1, 0.1, seed)


def fit(seed: int, steps_cap: int | None = None, epochs: int = 3) -> dict[str, Any]:
    """One ``train_model`` run on fixed data; ``steps_cap`` overrides the steps per execution
    cap. Returns the progress events, the history, the metrics and the steps used."""
    from functions.train import training
    from tests.fakes import tiny_model_json

    if steps_cap is not None:
        training.STEPS_PER_EXECUTION = steps_cap
    from storage.registry import Registry
    from tests.fakes import MemoryStore

    registry = Registry(MemoryStore("unit"))
    registry.register_model(
        "tiny",
        {
            "format": "keras_json",
            "keras_json": tiny_model_json(features=8, hidden=16, classes=3),
            "compile": {
                "optimizer": "adam",
                "loss": "sparse_categorical_crossentropy",
                "metrics": ["accuracy"],
            },
        },
    )
    deployment = registry.create_deployment(
        {"models": ["tiny"], "batch_size": 16, "epochs": epochs}
    )
    [model] = registry.resolve_models(deployment)
    progress: list[tuple[int, dict[str, float]]] = []
    try:
        trained = training.train_model(
            model, deployment, _data(seed), lambda e, m: progress.append((e, m)), None
        )
    finally:
        training.STEPS_PER_EXECUTION = 32
    return {
        "progress": progress,
        "history": trained.history,
        "metrics": {k: v for k, v in trained.metrics.items() if k != "fit_seconds"},
        "steps_per_execution": int(trained.model.steps_per_execution),
    }


def readiness_while_starting() -> dict[str, Any]:
    """In a process without TensorFlow: the train app's readiness right after it is created,
    whether TensorFlow was imported then, and readiness once the import finished."""
    from functions.train.app import create_app
    from functions.train.service import Trainer
    from kafkaml.settings import Settings
    from storage.registry import Registry
    from tests.access import SESSION_AUTH
    from tests.fakes import MemoryStore, RecordingPublisher

    before = "tensorflow" in sys.modules
    settings = Settings(bucket="unit", **SESSION_AUTH)
    trainer = Trainer(settings, Registry(MemoryStore("unit")), RecordingPublisher())
    started = time.monotonic()
    app = create_app(settings, trainer, preload=True)
    created_s = time.monotonic() - started
    client = app.test_client()
    first = client.get("/health/readiness")
    statuses = [first.status_code]
    deadline = time.monotonic() + 300
    while statuses[-1] != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
        statuses.append(client.get("/health/readiness").status_code)
    return {
        "tf_before": before,
        "created_s": created_s,
        "first": first.status_code,
        "first_error": first.get_json().get("error"),
        "statuses": sorted(set(statuses)),
        "last": statuses[-1],
        "ready_after_s": time.monotonic() - started,
        "tf_when_ready": "tensorflow" in sys.modules and "keras" in sys.modules,
    }
