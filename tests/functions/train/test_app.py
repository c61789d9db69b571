"""The train function end to end: sink -> topic -> control topic -> KafkaSource delivery -> run."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Producer

from kafkaml.kafka import ensure_topic, follow
from kafkaml.sink import RawSink
from tests.functions.train.conftest import consume_all, digits

pytestmark = pytest.mark.integration

ARTIFACTS = {
    "model.keras",
    "model.tflite",
    "metrics.json",
    "history.json",
    "confusion_matrix.png",
    "curves.png",
}


def _results(settings, run_id: str) -> list[dict]:
    events = []
    for msg in follow(settings.kafka_bootstrap, settings.results_topic, {0: 0}, 3.0):
        event = json.loads(msg.value())
        if event["data"]["run_id"] == run_id:
            events.append(event)
    return events


def test_digits_through_the_sink_train_once_on_three_deliveries(harness, unique):
    settings, registry = harness.settings, harness.registry
    deployment = harness.deployment(epochs=4)
    topic = f"digits-{unique}"
    ensure_topic(settings.kafka_bootstrap, topic, partitions=3)
    x, y = digits()
    sink = RawSink(
        settings.kafka_bootstrap,
        topic,
        deployment,
        data_type="uint8",
        label_type="uint8",
        data_reshape="8 8",
        label_reshape="1",
        validation_rate=0.1,
        test_rate=0.2,
        control_topic=settings.control_topic,
        description="sklearn digits",
    )
    for i in range(len(x)):
        sink.send(x[i], y[i])
    control = sink.close()
    assert {r.partition for r in control.ranges} == {0, 1, 2}
    assert control.total_msg == len(x)

    [record] = consume_all(settings.kafka_bootstrap, settings.control_topic)
    replies = [harness.deliver(record) for _ in range(3)]
    assert [r.status for r in replies] == [200, 200, 200]
    run = replies[0].body
    assert run["status"] == "succeeded" and run["deployment_id"] == deployment
    assert all(r.body["run_id"] == run["run_id"] for r in replies)
    assert replies[2].body["updated"] == run["updated"]  # redeliveries found the run
    assert run["splits"] == {"train": 1258, "validation": 180, "test": 359}

    [result] = run["models"].values()
    assert result["metrics"]["test"]["accuracy"] >= 0.90
    assert result["tflite_error"] is None
    prefix = f"runs/{run['run_id']}/"
    keys = registry.store.list(prefix)
    folder = f"digits-{unique}"
    assert set(keys) == {prefix + "status.json"} | {f"{prefix}{folder}/{a}" for a in ARTIFACTS}
    metrics = json.loads(registry.store.get(f"{prefix}{folder}/metrics.json").body)
    assert len(metrics["confusion_matrix"]) == 10
    assert sum(map(sum, metrics["confusion_matrix"])) == 359
    assert registry.store.get(f"{prefix}{folder}/curves.png").body[:4] == b"\x89PNG"
    history = json.loads(registry.store.get(f"{prefix}{folder}/history.json").body)
    assert len(history["loss"]) == 4 and "val_accuracy" in history

    datasource = registry.get_datasource(control.stream_id())
    assert datasource["control_message"]["topic"] == control.topic

    events = _results(settings, run["run_id"])
    types = [e["type"] for e in events]
    assert types == ["kml.training.progress"] * 4 + ["kml.training.completed"]
    assert [e["data"]["epoch"] for e in events[:4]] == [1, 2, 3, 4]


def test_kafka_ml_control_message_byte_for_byte(harness, unique):
    """Exactly what Kafka-ML's RawSink writes: one-byte key, json.dumps value, uint8 "8 8"."""
    settings = harness.settings
    deployment_id = "77"  # Kafka-ML ids are 0..255; 77 travels as the byte b"M"
    harness.deployment(deployment_id, epochs=2)
    topic = f"kafkaml-{unique}"
    x, y = digits()
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for i in range(600):
        producer.produce(topic, key=y[i].tobytes(), value=x[i].tobytes())
    assert producer.flush(30) == 0
    control = {
        "topic": f"{topic}:0:0:600",
        "input_format": "RAW",
        "description": "digits",
        "input_config": {
            "data_type": "uint8",
            "label_type": "uint8",
            "data_reshape": "8 8",
            "label_reshape": "1",
        },
        "validation_rate": 0.1,
        "test_rate": 0.1,
        "total_msg": 600,
    }
    producer.produce(
        settings.control_topic,
        key=bytes([int(deployment_id)]),
        value=json.dumps(control).encode("utf-8"),
    )
    assert producer.flush(30) == 0

    [record] = consume_all(settings.kafka_bootstrap, settings.control_topic)
    reply = harness.deliver(record)
    assert reply.status == 200, reply.body
    assert reply.body["status"] == "succeeded"
    assert reply.body["deployment_id"] == deployment_id
    assert reply.body["splits"] == {"train": 480, "validation": 60, "test": 60}


def test_batch_entry_trains_from_a_structured_event_file(harness, unique, tmp_path):
    settings = harness.settings
    deployment = harness.deployment(epochs=1)
    topic = f"batch-{unique}"
    x, y = digits()
    sink = RawSink(
        settings.kafka_bootstrap,
        topic,
        deployment,
        data_type="uint8",
        label_type="uint8",
        data_reshape="8 8",
        label_reshape="1",
        test_rate=0.2,
        control_topic=settings.control_topic,
    )
    for i in range(300):
        sink.send(x[i], y[i])
    control = sink.close()
    event = {
        "specversion": "1.0",
        "id": "job-1",
        "source": "/tests",
        "type": "kml.training.request",
        "datacontenttype": "application/json",
        "data": {**control.body(), "deployment_id": deployment},
    }
    path = tmp_path / "event"
    path.write_text(json.dumps(event))
    assert harness.batch(str(path)) == 0
    run, _ = harness.registry.get_run(control.run_id())
    assert run["status"] == "succeeded" and run["mode"] == "batch"

    bad = tmp_path / "bad"
    bad.write_text(json.dumps({**event, "data": {**event["data"], "test_rate": 7}}))
    assert harness.batch(str(bad)) == 1
    assert harness.batch(str(tmp_path / "missing")) == 2
