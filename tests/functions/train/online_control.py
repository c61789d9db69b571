"""Kafka-ML's online control message for the online tests, as its ``OnlineRawSink`` writes it:
a bare topic, ``incremental: true``, no ``total_msg``, the record keyed by the deployment's
one-byte id (or its UTF-8 id)."""

from __future__ import annotations

import json
from typing import Any

from confluent_kafka import Producer

from kafkaml.settings import Settings
from kafkaml.wire import control_message_key
from tests.functions.train.conftest import consume_all


def online_control(topic: str, data_reshape: str = "8 8", **fields: Any) -> dict[str, Any]:
    """The message's value: uint8 digits images and labels; ``fields`` add the online policy
    (``monitoring_metric``, ``window_records``, ...) or replace a field."""
    return {
        "topic": topic,
        "input_format": "RAW",
        "description": "online digits",
        "input_config": {
            "data_type": "uint8",
            "label_type": "uint8",
            "data_reshape": data_reshape,
            "label_reshape": "1",
        },
        "validation_rate": 0.2,
        "test_rate": 0,
        "total_msg": None,
        "unsupervised_topic": None,
        "dataset_restrictions": {},
        "incremental": True,
        **fields,
    }


def send_online_control(
    settings: Settings,
    deployment_id: str,
    topic: str,
    *,
    kafka_ml_key: bool = True,
    **fields: Any,
) -> None:
    """Write the control message to the settings' control topic (acknowledged)."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    producer.produce(
        settings.control_topic,
        key=control_message_key(deployment_id, kafka_ml_key=kafka_ml_key),
        value=json.dumps(online_control(topic, **fields)),
    )
    assert producer.flush(30) == 0


def online_control_record(settings: Settings, deployment_id: str, topic: str, **fields: Any):
    """Write it to a control topic of the test's own and read it back, as KafkaSource sees it."""
    send_online_control(settings, deployment_id, topic, **fields)
    [record] = consume_all(settings.kafka_bootstrap, settings.control_topic)
    return record
