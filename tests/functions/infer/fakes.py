"""Test doubles for infer's unit tests: a NumPy model, a recording producer, a fixed loader."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from functions.infer.producer import Delivery
from functions.infer.serving import Loaded
from kafkaml.errors import Unavailable
from kafkaml.settings import Settings
from tests.access import SESSION_AUTH

SPEC = {
    "id": "digits-1",
    "run_id": "run-1",
    "model": "digits",
    "input_format": "RAW",
    "input_config": {"data_type": "float32", "data_reshape": "8 8"},
    "input_topic": "in",
    "output_topic": "out",
    "min_scale": 0,
    "max_scale": 2,
    "target_concurrency": 10,
}


class LinearModel:
    """``x.reshape(n, 64) @ W``: deterministic, records every call's batch size."""

    runtime = "fake"
    input_shape = (8, 8)
    input_dtype = np.dtype("float32")

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.weights = np.arange(640, dtype=np.float32).reshape(64, 10) / 640
        self.calls: list[int] = []
        self.delay_s = delay_s
        self.fail = fail

    def predict(self, x: np.ndarray) -> list[np.ndarray]:
        assert x.shape[1:] == (8, 8) and x.dtype == np.float32
        self.calls.append(len(x))
        if self.delay_s:
            threading.Event().wait(self.delay_s)
        if self.fail:
            raise RuntimeError("boom")
        return [x.reshape(len(x), 64) @ self.weights]

    def expected(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32).reshape(len(x), 64) @ self.weights


@dataclass
class RecordingProducer:
    """Keeps what was sent; ``down`` makes every send a 503 like an unreachable broker."""

    sent: list[dict[str, Any]] = field(default_factory=list)
    down: bool = False

    def send(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> Delivery:
        if self.down:
            raise Unavailable("Kafka at test did not take a record")
        self.sent.append({"topic": topic, "value": value, "key": key, "headers": dict(headers)})
        return Delivery(topic, 0, len(self.sent) - 1)

    def close(self) -> None:
        pass

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [r for r in self.sent if r["topic"] == topic]


def settings(**changes: Any) -> Settings:
    return Settings(inference_id=SPEC["id"], dlq_topic="dlq", **{**SESSION_AUTH, **changes})


def fixed_loader(
    model: Any, spec: dict[str, Any] | None = None, gate: threading.Event | None = None
):
    def load(_settings: Settings) -> Loaded:
        if gate is not None:
            gate.wait(10)
        return Loaded(dict(spec or SPEC), model)

    return load
