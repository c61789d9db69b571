"""Train test fixtures: a TensorFlow child process, registry records, KafkaSource deliveries."""

from __future__ import annotations

import base64
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition

from kafkaml.settings import Settings
from storage.registry import Registry
from tests.functions.train import worker


@pytest.fixture(scope="session")
def tf_child():
    """One spawned process that keeps TensorFlow (and the train apps) loaded for the session."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


@pytest.fixture(scope="session")
def model_json(tf_child) -> str:
    return tf_child.submit(worker.digits_model_json).result(timeout=300)


@pytest.fixture(scope="session")
def registry(stack) -> Registry:
    reg = Registry.from_settings(stack)
    reg.ensure_ready()
    return reg


@pytest.fixture
def settings(stack, unique) -> Settings:
    """Stack settings with this test's own control and results topics."""
    return stack.replace(control_topic=f"control-{unique}", results_topic=f"results-{unique}")


@dataclass
class Reply:
    status: int
    body: Any


@dataclass
class Harness:
    settings: Settings
    registry: Registry
    child: ProcessPoolExecutor
    model_json: str
    unique: str

    def deployment(self, deployment_id: str | None = None, epochs: int = 4, **params: Any) -> str:
        """Register the digits model and deploy it; returns the deployment id."""
        name = f"digits-{self.unique}"
        try:
            self.registry.get_model(name)
        except Exception:
            self.registry.register_model(
                name,
                {
                    "description": "digits",
                    "format": "keras_json",
                    "keras_json": self.model_json,
                    "compile": {
                        "optimizer": "adam",
                        "loss": "sparse_categorical_crossentropy",
                        "metrics": ["accuracy"],
                    },
                },
            )
        record = {
            "models": [name],
            "batch_size": 32,
            "epochs": epochs,
            "shuffle": True,
            "seed": 7,
            "learning_rate": 0.01,
            "fit_kwargs": {},
            "evaluate_kwargs": {},
            **params,
        }
        if deployment_id is not None:
            record["id"] = deployment_id
        return self.registry.create_deployment(record)["id"]

    def post(self, headers: dict[str, str], body: bytes) -> Reply:
        status, data = self.child.submit(worker.post, self.settings, headers, body).result(600)
        return Reply(status, data)

    def deliver(self, msg) -> Reply:
        """Deliver a consumed Kafka record exactly as KafkaSource would (binary mode)."""
        return self.post(*kafkasource_request(msg))

    def request(self, data: dict[str, Any]) -> Reply:
        import json

        return self.post(
            {
                "ce-specversion": "1.0",
                "ce-id": f"req-{time.time_ns()}",
                "ce-source": "/tests",
                "ce-type": "kml.training.request",
                "content-type": "application/json",
            },
            json.dumps(data).encode(),
        )

    def batch(self, event_path: str) -> int:
        return self.child.submit(worker.batch, self.settings, event_path).result(600)


@pytest.fixture
def harness(settings, registry, tf_child, model_json, unique) -> Harness:
    return Harness(settings, registry, tf_child, model_json, unique)


def kafkasource_request(
    msg, source: str = "kml-train", namespace: str = "default"
) -> tuple[dict[str, str], bytes]:
    """Headers and body KafkaSource sends for a raw (non-CloudEvent) record, byte-array key type
    (the key Base64); header values go out raw, as the dispatcher sends them."""
    p, o, topic = msg.partition(), msg.offset(), msg.topic()
    stamp = datetime.fromtimestamp(msg.timestamp()[1] / 1000, UTC)
    headers = {
        "ce-specversion": "1.0",
        "ce-id": f"partition:{p}/offset:{o}",
        "ce-source": f"/apis/v1/namespaces/{namespace}/kafkasources/{source}#{topic}",
        "ce-type": "dev.knative.kafka.event",
        "ce-subject": f"partition:{p}#{o}",
        "ce-time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "ce-knativekafkapartition": str(p),
        "ce-knativekafkaoffset": str(o),
        "Prefer": "reply",
        "Kn-Namespace": namespace,
    }
    if msg.key() is not None:
        key = base64.b64encode(msg.key()).decode()
        headers["ce-key"] = headers["ce-partitionkey"] = key
    for name, value in msg.headers() or []:
        if name.lower() == "content-type":
            headers["ce-datacontenttype"] = value.decode().lower()
        else:
            ext = "".join(c for c in name.lower() if c.isascii() and c.isalnum())
            headers[f"ce-kafkaheader{ext}"] = value.decode(errors="replace")
    return headers, msg.value()


def consume_all(bootstrap: str, topic: str, timeout_s: float = 20.0) -> list:
    """Every record of a one-partition topic (the control topic of a test)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "tests", "enable.auto.commit": False}
    )
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        consumer.assign([TopicPartition(topic, 0, low)])
        out, deadline = [], time.monotonic() + timeout_s
        while len(out) < high - low and time.monotonic() < deadline:
            out += [m for m in consumer.consume(100, timeout=1) if m.error() is None]
        return out
    finally:
        consumer.close()


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.uint8), data.target.astype(np.uint8)
