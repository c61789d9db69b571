"""Online streams' pure parts: window offsets, Kafka-ML's improvement rule, scoring a model.

No storage and no Kafka here: what a window is (the offsets beyond a stream's cursor), when a
candidate replaces the promoted model, and the promoted model's score on held-out data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np

from functions.train import dataset
from functions.train.training import build_model, compile_model
from kafkaml.wire import OffsetRange
from storage.records import Model
from storage.specs import Deployment


def stream_id_for(deployment_id: str, topic: str) -> str:
    """One stream per deployment and topic: a redelivered control message finds it."""
    return "stream-" + hashlib.sha256(f"{deployment_id}\n{topic}".encode()).hexdigest()[:16]


def window_run_id(stream_id: str, ranges: list[OffsetRange]) -> str:
    """The run of one window: the same stream and offsets give the same run (a redelivered
    tick finds it instead of training again)."""
    topic = ",".join(str(r) for r in ranges)
    return "run-" + hashlib.sha256(f"{stream_id}\n{topic}".encode()).hexdigest()[:20]


def metric_key(monitoring_metric: str) -> str:
    """Kafka-ML names validation metrics ``val_<name>``; scores on held-out data are ``<name>``."""
    return monitoring_metric[4:] if monitoring_metric.startswith("val_") else monitoring_metric


def should_promote(
    candidate: float | None, promoted: float | None, change: str, improvement: float
) -> bool:
    """Kafka-ML's rule: better than the promoted model by ``improvement`` in direction ``change``.

    The first window (nothing promoted yet) promotes; a candidate without a score never does.
    """
    if candidate is None or not np.isfinite(candidate):
        return False
    if promoted is None or not np.isfinite(promoted):
        return True
    if change == "up":
        return candidate >= promoted + improvement
    return candidate <= promoted - improvement


def window_ranges(
    topic: str, cursor: dict[str, int], ends: dict[int, int], limit: int | None
) -> list[OffsetRange]:
    """``[cursor, end)`` per partition with new records, at most ``limit`` records in all."""
    out: list[OffsetRange] = []
    left = limit
    for partition in sorted(ends):
        start, end = int(cursor.get(str(partition), 0)), int(ends[partition])
        if end <= start:
            continue
        if left is not None:
            end = min(end, start + left)
            left -= end - start
        out.append(OffsetRange(topic, partition, start, end))
        if left == 0:
            break
    return out


def score(
    record: dict[str, Any],
    stored_deployment: dict[str, Any],
    held_out: dataset.Split,
    load: Callable[[str, str], None],
) -> dict[str, float]:
    """The model of ``record`` scored as it is on ``held_out`` (the promoted model's test)."""
    model_record = Model.from_dict(record)
    deployment = Deployment.from_dict(stored_deployment)
    model = build_model(model_record, load)
    compile_model(model, model_record.name, model_record.compile, deployment.learning_rate)
    scores = model.evaluate(
        held_out.x.astype(np.float32, copy=False),
        held_out.y,
        batch_size=deployment.batch_size,
        verbose=0,
        return_dict=True,
    )
    return {k: float(v) for k, v in scores.items()}
