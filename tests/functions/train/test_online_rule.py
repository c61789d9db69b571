"""Online training's pure parts: Kafka-ML's improvement rule, exact windows, the online control
message as Kafka-ML's OnlineRawSink writes it."""

from __future__ import annotations

import json

import pytest

from functions.train.online import metric_key, should_promote, window_ranges
from kafkaml.wire import InvalidControlMessage, OffsetRange, parse_control_message

ONLINE = {
    "topic": "live-digits",
    "input_format": "RAW",
    "description": "online",
    "input_config": {
        "data_type": "uint8",
        "label_type": "uint8",
        "data_reshape": "8 8",
        "label_reshape": "1",
    },
    "validation_rate": 0.2,
    "test_rate": 0,
    "total_msg": None,
    "unsupervised_topic": None,
    "dataset_restrictions": {},
    "incremental": True,
}


@pytest.mark.parametrize(
    "candidate,promoted,change,improvement,expected",
    [
        (0.5, None, "up", 0.05, True),  # the first window promotes
        (None, None, "up", 0.05, False),  # nothing scored: nothing to promote
        (0.80, 0.70, "up", 0.05, True),
        (0.74, 0.70, "up", 0.05, False),  # better, but not by the improvement
        (0.60, 0.70, "up", 0.05, False),
        (0.30, 0.40, "down", 0.05, True),
        (0.37, 0.40, "down", 0.05, False),
        (0.50, 0.40, "down", 0.05, False),
        (0.40, 0.40, "down", 0.0, True),  # improvement 0: as good is good enough
    ],
)
def test_promotion_follows_kafka_mls_improvement_rule(
    candidate, promoted, change, improvement, expected
):
    assert should_promote(candidate, promoted, change, improvement) is expected


def test_metric_names_map_kafka_mls_val_prefix():
    assert metric_key("val_accuracy") == "accuracy" and metric_key("loss") == "loss"


def test_windows_are_the_offsets_beyond_the_cursor():
    ranges = window_ranges("t", {"0": 5, "1": 3}, {0: 9, 1: 3, 2: 4}, None)
    assert ranges == [OffsetRange("t", 0, 5, 9), OffsetRange("t", 2, 0, 4)]
    capped = window_ranges("t", {"0": 5}, {0: 9, 1: 4}, 6)
    assert capped == [OffsetRange("t", 0, 5, 9), OffsetRange("t", 1, 0, 2)]
    assert window_ranges("t", {"0": 9}, {0: 9}, None) == []


def test_online_control_message_as_online_raw_sink_writes_it():
    msg = parse_control_message(json.dumps(ONLINE).encode(), bytes([7]))
    assert (msg.deployment_id, msg.topic, msg.incremental, msg.total_msg) == (
        "7",
        "live-digits",
        True,
        None,
    )
    assert msg.online == {
        "stream_timeout": 60000,
        "monitoring_metric": "val_loss",
        "change": "down",
        "improvement": 0.05,
        "indefinite": False,
        "window_records": None,
    }
    fields = {"stream_timeout": -1, "monitoring_metric": "val_accuracy", "change": "up"}
    msg = parse_control_message(json.dumps({**ONLINE, **fields}).encode(), b"7")
    assert msg.online["stream_timeout"] == -1 and msg.online["change"] == "up"


def test_bad_online_fields_are_named():
    bad = {**ONLINE, "topic": "t:0:0:5", "change": "sideways", "stream_timeout": -5}
    bad["improvement"] = "lots"
    with pytest.raises(InvalidControlMessage) as e:
        parse_control_message(json.dumps(bad).encode(), b"7")
    text = "; ".join(e.value.problems)
    for field in ("topic:", "change:", "stream_timeout:", "improvement:"):
        assert field in text
