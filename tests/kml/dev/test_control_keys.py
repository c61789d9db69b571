"""Kafka-ML's one-byte deployment ids 0..255 reach the right deployment, through the real broker,
the control KafkaSource of knative/base (key-type byte-array, both control topics), the bridge
(headers as the real dispatcher sends them) and the train function's HTTP app.

Kafka-ML writes ``bytes([id])`` to ``KAFKA_ML_CONTROL_TOPIC``; the test does the same for every
id. Some ids have a deployment whose data does not decode, so its run starts and fails at once
(the run record names the deployment); the others fail as unknown deployments, naming the id.
Each answer is a 4xx, so every control message ends on the dead-letter topic with the body.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient
from werkzeug.serving import make_server

from functions.train.app import create_app
from kafkaml.wire import deployment_id_from_key
from kml.dev.bridge import Bridge
from kml.kustomize import load_documents
from storage.registry import Registry
from tests.kml.dev.bridge_helpers import (
    committed,
    create_topic,
    eventually,
    produce,
    write_kustomization,
)

pytestmark = pytest.mark.integration

BASE = Path(__file__).resolve().parents[3] / "knative" / "base"
KAFKA_ML_TOPIC = "KAFKA_ML_CONTROL_TOPIC"
WITH_DEPLOYMENT = [10, 31, 32, 63, 127, 128, 200, 255]
"""Ids that used to be lost, emptied or read as '?' (63) behind the real dispatcher."""
STRING_IDS = [b"mnist-1", b"ghost-dep"]


def _control_message(data_topic: str) -> bytes:
    """What Kafka-ML's RawSink writes (two records of 3 bytes where 8x8 uint8 are declared)."""
    return json.dumps(
        {
            "topic": f"{data_topic}:0:0:2",
            "input_format": "RAW",
            "description": "keys",
            "input_config": {
                "data_type": "uint8",
                "label_type": "uint8",
                "data_reshape": "8 8",
                "label_reshape": "1",
            },
            "validation_rate": 0.0,
            "test_rate": 0.0,
            "total_msg": 2,
            "unsupervised_topic": None,
            "dataset_restrictions": {},
            "incremental": False,
        }
    ).encode()


def _dead_letters(bootstrap: str, topic: str, n: int, timeout_s: float = 180.0) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{topic}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    out: dict[str, Any] = {}  # by record key: a redelivery (at least once) may add a copy
    copies = 0
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < n and time.monotonic() < deadline:
            for m in consumer.consume(500, 0.5):
                if m.error() is None:
                    key = dict(m.headers() or []).get("ce_key", b"").decode()
                    copies += key in out
                    out[key] = m
    finally:
        consumer.close()
    assert len(out) == n, f"{len(out)} of {n} control messages on the dead-letter topic"
    print(f"{n} control messages dead-lettered, {copies} redelivered copies")
    return list(out.values())


@pytest.fixture
def train_url(stack):
    """The train function's app on loopback, on a fresh bucket (no deployment exists yet)."""
    unique = uuid.uuid4().hex[:8]
    settings = stack.replace(bucket=f"kml-keys-{unique}", results_topic=f"results-{unique}")
    registry = Registry.from_settings(settings)
    registry.ensure_ready()
    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", registry, unique
    server.shutdown()


def test_every_one_byte_kafka_ml_id_reaches_its_deployment(stack, train_url, tmp_path):
    url, registry, unique = train_url
    registry.register_model("ghost", {"format": "keras_json", "keras_json": "{}"})
    for number in WITH_DEPLOYMENT:
        registry.create_deployment({"id": str(number), "models": ["ghost"]})
    registry.create_deployment({"id": "ghost-dep", "models": ["ghost"]})
    data_topic, dlq = f"keys-data-{unique}", f"keys-dlq-{unique}"
    create_topic(stack.kafka_bootstrap, data_topic)
    produce(stack.kafka_bootstrap, data_topic, [{"value": b"abc", "key": b"\x01"}] * 2)

    (source,) = load_documents(BASE / "kafkasource-control.yaml")
    assert KAFKA_ML_TOPIC in source["spec"]["topics"]
    source["spec"]["consumerGroup"] = f"kml-train-{unique}"
    (dead_letter_sink,) = load_documents(BASE / "dead-letter-sink.yaml")
    dead_letter_sink["spec"]["topic"] = dlq
    manifests = write_kustomization(tmp_path / "manifests", [source, dead_letter_sink])
    bridge = Bridge(
        stack.replace(state_dir=str(tmp_path / "state")),
        manifests,
        commit_interval_s=0.3,
        fixed_urls={"kml-train": url},
        create_topics=True,
    )
    bridge.start()
    try:
        topics = AdminClient({"bootstrap.servers": stack.kafka_bootstrap}).list_topics(timeout=10)
        assert KAFKA_ML_TOPIC in topics.topics  # the local stack creates Kafka-ML's default
        keys = [bytes([i]) for i in range(256)] + STRING_IDS
        value = _control_message(data_topic)
        produce(stack.kafka_bootstrap, KAFKA_ML_TOPIC, [{"value": value, "key": k} for k in keys])
        dead = _dead_letters(stack.kafka_bootstrap, dlq, len(keys))
        eventually(
            lambda: (
                committed(stack.kafka_bootstrap, f"kml-train-{unique}", KAFKA_ML_TOPIC)
                == [len(keys)]
            ),
            what="every control message finished",
        )
    finally:
        bridge.stop()

    answers = {}
    for msg in dead:
        headers = {k: v.decode() for k, v in msg.headers()}
        key = base64.b64decode(headers["ce_key"])  # the key, Base64 all the way
        answers[key] = (
            int(headers["ce_knativeerrorcode"]),
            json.loads(base64.b64decode(headers["ce_knativeerrordata"])),
        )
    assert sorted(answers) == sorted(keys)
    for key in keys:
        status, body = answers[key]
        expected = deployment_id_from_key(key)[0]
        assert 400 <= status < 500, (key, body)
        if expected in {str(n) for n in WITH_DEPLOYMENT} | {"ghost-dep"}:
            assert body["kind"] == "undecodable_record", (key, body)  # its run started
        else:
            assert body["error"] == f"unknown deployment {expected!r}", (key, body)
    runs = {run["deployment_id"]: run for run in registry.list_runs()}
    assert sorted(runs) == sorted([str(n) for n in WITH_DEPLOYMENT] + ["ghost-dep"])
    assert all(run["status"] == "failed" for run in runs.values())
