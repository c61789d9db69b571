"""The train handler over an in-memory store, in-memory topics and a recording publisher.

No Kafka, no MinIO. Errors that come before any training run here; the one test that trains
runs in the TensorFlow child (TensorFlow stays out of the pytest process).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from functions.train.app import create_app
from functions.train.service import Trainer
from kafkaml import events
from kafkaml.errors import is_retried
from kafkaml.events import new_event, to_http
from kafkaml.settings import Settings
from kafkaml.web import function_of
from kafkaml.wire import parse_control_message
from storage.registry import Registry
from tests.access import SESSION_AUTH
from tests.fakes import MemoryStore, MemoryTopics, RecordingPublisher, tiny_model_json

ROWS = 100
ARTIFACTS = {
    "model.keras",
    "model.tflite",
    "metrics.json",
    "history.json",
    "confusion_matrix.png",
    "curves.png",
}


@dataclass
class World:
    """A registered tiny model, its deployment, 100 labelled records and the train app."""

    registry: Registry
    topics: MemoryTopics
    publisher: RecordingPublisher
    app: Any
    deployment: str
    body: dict[str, Any]
    trainer: Trainer

    @classmethod
    def build(cls, epochs: int = 1, topics: MemoryTopics | None = None, **settings: Any) -> World:
        """``topics`` replaces the in-memory Kafka (a slow one); ``settings`` change settings."""
        settings = Settings(
            bucket="unit", kafka_bootstrap="memory:9092", **{**SESSION_AUTH, **settings}
        )
        registry = Registry(MemoryStore("unit"))
        registry.register_model(
            "tiny",
            {
                "format": "keras_json",
                "keras_json": tiny_model_json(features=4, hidden=8, classes=3),
                "compile": {
                    "optimizer": "adam",
                    "loss": "sparse_categorical_crossentropy",
                    "metrics": ["accuracy"],
                },
            },
        )
        deployment = registry.create_deployment(
            {"models": ["tiny"], "batch_size": 16, "epochs": epochs, "seed": 3}
        )["id"]
        x = np.random.default_rng(0).random((ROWS, 4), dtype=np.float32)
        y = (x[:, 0] * 3).astype(np.uint8)  # the first feature decides the class
        topics = topics or MemoryTopics()
        span = topics.append(
            "rows", [(bytes([int(c)]), v.tobytes()) for v, c in zip(x, y, strict=True)]
        )
        body = {
            "topic": str(span),
            "input_format": "RAW",
            "input_config": {
                "data_type": "float32",
                "label_type": "uint8",
                "data_reshape": "4",
                "label_reshape": "1",
            },
            "validation_rate": 0.1,
            "test_rate": 0.2,
            "total_msg": ROWS,
        }
        publisher = RecordingPublisher()
        trainer = Trainer(settings, registry, publisher, reader=topics)
        app = create_app(settings, trainer)
        return cls(registry, topics, publisher, app, deployment, body, trainer)

    def run_id(self) -> str:
        return parse_control_message(
            json.dumps(self.body).encode(), None, deployment_id=self.deployment
        ).run_id()

    def post(self, type_: str, data: Any, age_s: float = 0.0) -> tuple[int, dict[str, Any]]:
        """POST one event sent ``age_s`` seconds ago (its ``time``)."""
        sent = datetime.now(UTC) - timedelta(seconds=age_s)
        headers, body = to_http(new_event(type_, "/tests/train", data, time=sent))
        headers["Authorization"] = f"Bearer {self.trainer.settings.auth_token}"  # any process
        reply = self.app.test_client().post("/", headers=headers, data=body)
        return reply.status_code, reply.get_json()

    def request(self, age_s: float = 0.0, **changes: Any) -> tuple[int, dict[str, Any]]:
        """A ``kml.training.request`` for the 100 records (``changes`` override its fields)."""
        return self.post(
            events.TRAINING_REQUEST,
            {**self.body, "deployment_id": self.deployment, **changes},
            age_s=age_s,
        )


@pytest.fixture
def world() -> World:
    return World.build()


def test_unknown_deployment_is_retried_while_young_then_422_naming_it_and_announced(world):
    """Its kml.deployment.create may still be on its way: 404 (retried) for a while, then a
    permanent 422 and kml.training.failed, so whoever sent it hears why; nothing is read."""
    status, body = world.request(deployment_id="ghost", age_s=1)
    assert status == 404 and is_retried(status) and "still on its way" in body["error"]
    assert world.publisher.of_type("failed") == []
    status, body = world.request(deployment_id="ghost", age_s=60)
    assert status == 422
    assert body["kind"] == "unknown_deployment"
    assert body["problems"] == ["deployment_id: no deployment 'ghost'"]
    [failed] = world.publisher.of_type("failed")
    assert (failed["status"], failed["run_id"]) == (422, body["run_id"])
    assert "unknown deployment 'ghost'" in failed["reason"]
    assert world.topics.reads == [] and world.registry.store.list("runs/") == []


def test_a_run_whose_lease_is_held_answers_409_so_the_delivery_is_retried(world):
    world.registry.claim_run(
        world.run_id(), {"deployment_id": world.deployment, "lease_expires": time.time() + 3600}
    )
    status, body = world.request()
    assert status == 409 and "retry later" in body["error"]
    assert world.topics.reads == []
    assert world.registry.get_run(world.run_id())[0]["status"] == "claimed"


def test_kafka_down_fails_the_run_as_transient_and_answers_503(world):
    world.topics.down = True
    status, body = world.request()
    assert status == 503 and body["run_id"] == world.run_id()
    run, _ = world.registry.get_run(world.run_id())
    assert (run["status"], run["permanent"], run["error_status"]) == ("failed", False, 503)
    assert [e["status"] for e in world.publisher.of_type("failed")] == [503]


def test_an_unknown_event_type_names_the_accepted_ones_and_stop_closes_the_publisher(world):
    status, body = world.post(events.MODEL_REGISTER, {"name": "x"})
    assert status == 400
    assert body["accepted"] == [
        events.KAFKA_EVENT,
        events.TRAINING_REQUEST,
        events.STREAM_TICK,
        events.PING_EVENT,
    ]
    assert "not 'kml.model.register'" in body["error"]
    function_of(world.app).stop()
    assert world.publisher.closed


def train_twice(epochs: int) -> dict[str, Any]:
    """Runs in the TensorFlow child: a delivery and its redelivery; what they left behind."""
    world = World.build(epochs)
    replies = [world.request(), world.request()]
    store, run_id = world.registry.store, replies[0][1].get("run_id")
    metrics = json.loads(store.get(f"runs/{run_id}/tiny/metrics.json").body)
    return {
        "replies": replies,
        "stored_run": world.registry.get_run(run_id)[0],
        "keys": store.list(f"runs/{run_id}/"),
        "png": store.get(f"runs/{run_id}/tiny/curves.png").body[:4],
        "confusion": metrics["confusion_matrix"],
        "reads": world.topics.reads,
        "events": world.publisher.events,
    }


def test_a_control_message_trains_stores_artifacts_and_a_redelivery_gets_the_same_run(tf_child):
    out = tf_child.submit(train_twice, 2).result(timeout=600)
    (first, run), (again, same) = out["replies"]
    assert (first, again) == (200, 200), run
    assert run["status"] == "succeeded" and same == run == out["stored_run"]
    assert run["splits"] == {"train": 70, "validation": 10, "test": 20}
    prefix = f"runs/{run['run_id']}/"
    assert set(out["keys"]) == {prefix + "status.json"} | {prefix + "tiny/" + a for a in ARTIFACTS}
    assert set(run["models"]["tiny"]["artifacts"]) == ARTIFACTS
    assert {"loss", "accuracy"} <= set(run["models"]["tiny"]["metrics"]["test"])
    assert out["png"] == b"\x89PNG" and sum(map(sum, out["confusion"])) == 20
    assert len(out["reads"]) == 1  # the redelivery found the run: the records were read once
    assert [(e["type"], e.get("epoch")) for e in out["events"]] == [
        ("progress", 1),
        ("progress", 2),
        ("completed", None),
    ]
