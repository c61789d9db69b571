"""Control messages and record codecs, without a broker."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kafkaml.wire import (
    ControlMessage,
    InvalidControlMessage,
    OffsetRange,
    UndecodableRecord,
    codec_for,
    control_message_key,
    deployment_id_from_key,
    parse_control_message,
    to_control_message_bytes,
)

RAW_CONFIG = {
    "data_type": "uint8",
    "label_type": "uint8",
    "data_reshape": "8 8",
    "label_reshape": "1",
}


def kafka_ml_value(**changes) -> bytes:
    """Byte for byte what Kafka-ML's datasource library sends (``json.dumps`` of its dict)."""
    body = {
        "topic": "digits:0:0:60,digits:1:10:50",
        "input_format": "RAW",
        "description": "digits",
        "input_config": RAW_CONFIG,
        "validation_rate": 0.1,
        "test_rate": 0.1,
        "total_msg": 100,
        **changes,
    }
    return json.dumps(body).encode("utf-8")


def test_kafka_ml_message_with_one_byte_key():
    msg = parse_control_message(kafka_ml_value(), bytes([7]))
    assert msg.deployment_id == "7"
    assert msg.ranges == (OffsetRange("digits", 0, 0, 60), OffsetRange("digits", 1, 10, 50))
    assert msg.record_count == 100 and msg.input_format == "RAW"
    assert (msg.validation_rate, msg.test_rate, msg.incremental) == (0.1, 0.1, False)
    assert msg.unsupervised_topic is None and msg.dataset_restrictions == {}


@pytest.mark.parametrize(
    "key,expected",
    [
        (b"\x07", "7"),
        ("\x07", "7"),
        (b"42", "42"),
        ("300", "300"),
        (b"\xc8", "200"),
        (b"\x00", "0"),
        (b"\xff", "255"),
        (b"\x09", "9"),
        ("M", "77"),
        ("dep-a.1", "dep-a.1"),
        (b"dep_b", "dep_b"),
    ],
)
def test_deployment_id_key_rule(key, expected):
    assert deployment_id_from_key(key) == (expected, None)


@pytest.mark.parametrize(
    "key,problem",
    [
        (None, "missing"),
        (b"", "missing"),
        ("\ufffd", "label the source key-type byte-array"),
        ("a/b", "is not a deployment id"),
        ("..", "is not a deployment id"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_bad_keys_are_named(key, problem):
    deployment_id, why = deployment_id_from_key(key)
    assert deployment_id is None and problem in why


def test_every_bad_field_is_listed_at_once():
    value = json.dumps(
        {
            "topic": "t:0:1:x,t:0:0:5,t:0:0:5",
            "input_format": "RAW",
            "input_config": {"data_type": "complex-ish", "data_reshape": "8 x"},
            "validation_rate": -0.1,
            "test_rate": "half",
            "total_msg": 3,
            "description": 5,
        }
    ).encode()
    with pytest.raises(InvalidControlMessage) as caught:
        parse_control_message(value, None)
    err = caught.value
    assert err.status == 422
    text = "\n".join(err.problems)
    for expected in (
        "key: missing",
        "topic entry 0",
        "named twice",
        "input_config.data_type",
        "input_config.data_reshape",
        "input_config.label_type: required",
        "validation_rate",
        "test_rate",
        "description",
    ):
        assert expected in text, expected
    assert err.to_dict()["problems"] == err.problems


def test_bad_json_is_400_and_non_object_is_422():
    with pytest.raises(InvalidControlMessage) as bad:
        parse_control_message(b"{not json", b"1")
    assert bad.value.status == 400
    with pytest.raises(InvalidControlMessage) as array:
        parse_control_message(b"[1, 2]", b"1")
    assert array.value.status == 422


def test_explicit_deployment_id_skips_the_key_rule():
    msg = parse_control_message(kafka_ml_value(), None, deployment_id="a")
    assert msg.deployment_id == "a"  # not ord("a")


def test_serialise_round_trip_and_stable_ids():
    msg = parse_control_message(kafka_ml_value(description="x"), b"dep")
    again = parse_control_message(to_control_message_bytes(msg), control_message_key("dep"))
    assert again == msg
    assert again.run_id() == msg.run_id()
    assert msg.with_deployment("other").run_id() != msg.run_id()
    assert msg.with_deployment("other").stream_id() == msg.stream_id()
    assert control_message_key(7, kafka_ml_key=True) == b"\x07"
    with pytest.raises(ValueError):
        control_message_key(256, kafka_ml_key=True)


def test_control_message_fields_have_kafka_ml_order():
    msg = ControlMessage("1", "t:0:0:2", "RAW", RAW_CONFIG, total_msg=2)
    assert list(json.loads(to_control_message_bytes(msg))) == [
        "topic",
        "input_format",
        "description",
        "input_config",
        "validation_rate",
        "test_rate",
        "total_msg",
        "unsupervised_topic",
        "dataset_restrictions",
        "incremental",
    ]


def test_raw_codec_decodes_a_batch_in_shape():
    codec = codec_for("RAW", RAW_CONFIG)
    x = np.arange(5 * 64, dtype=np.uint8).reshape(5, 8, 8)
    pairs = [codec.encode(x[i], i) for i in range(5)]
    decoded = codec.decode_features([v for v, _ in pairs])
    assert decoded.shape == (5, 8, 8) and np.array_equal(decoded, x)
    assert codec.decode_labels([k for _, k in pairs]).tolist() == [[0], [1], [2], [3], [4]]


def test_raw_codec_names_the_bad_record():
    codec = codec_for("RAW", {**RAW_CONFIG, "data_type": "float32"})
    good = np.zeros((8, 8), np.float32).tobytes()
    with pytest.raises(UndecodableRecord) as caught:
        codec.decode_features([good, good, good[:-4], good])
    assert caught.value.index == 2 and "252 bytes" in caught.value.message
    with pytest.raises(UndecodableRecord) as missing:
        codec.decode_labels([b"\x01", None])
    assert missing.value.index == 1 and "no key" in missing.value.message


def test_raw_without_reshape_is_flat_and_float64_is_accepted():
    codec = codec_for("RAW", {"data_type": "float64", "label_type": "int64"})
    x = np.array([[1.5, 2.5, 3.5]])
    assert codec.decode_features([x.tobytes()]).tolist() == [[1.5, 2.5, 3.5]]


def test_avro_codec_schemaless_records():
    data_schema = {
        "type": "record",
        "name": "d",
        "fields": [
            {"name": "gender", "type": "float"},
            {"name": "age", "type": "double"},
            {"name": "smoking", "type": "int"},
        ],
    }
    label_schema = {
        "type": "record",
        "name": "l",
        "fields": [{"name": "diagnosis", "type": "boolean"}],
    }
    codec = codec_for(
        "AVRO", {"data_scheme": json.dumps(data_schema), "label_scheme": str(label_schema)}
    )  # Kafka-ML's quote style
    rows = [
        ({"gender": 1.0, "age": 0.5, "smoking": 3}, {"diagnosis": True}),
        ({"gender": 0.0, "age": -1.0, "smoking": 0}, {"diagnosis": False}),
    ]
    encoded = [codec.encode(x, y) for x, y in rows]
    assert codec.decode_features([v for v, _ in encoded]).tolist() == [[1, 0.5, 3], [0, -1, 0]]
    assert codec.decode_labels([k for _, k in encoded]).tolist() == [1, 0]
    with pytest.raises(UndecodableRecord) as caught:
        codec.decode_features([encoded[0][0], encoded[0][0] + b"\x00\x01"])
    assert caught.value.index == 1 and "left over" in caught.value.message


def test_avro_schema_problems_are_listed():
    with pytest.raises(InvalidControlMessage) as caught:
        codec_for(
            "AVRO",
            {
                "data_scheme": "{bad",
                "label_scheme": json.dumps(
                    {"type": "record", "name": "l", "fields": [{"name": "s", "type": "string"}]}
                ),
            },
        )
    text = " ".join(caught.value.problems)
    assert "data_scheme: not JSON" in text and "not numeric" in text


def test_json_codec_objects_arrays_and_bad_records():
    codec = codec_for("JSON", {"data_reshape": "2 2", "label_type": "int64"})
    values = [b'{"data": [[1, 2], [3, 4]]}', b"[5, 6, 7, 8]"]
    assert codec.decode_features(values).shape == (2, 2, 2)
    assert codec.decode_labels([b"3", b"4"]).tolist() == [[3], [4]]
    with pytest.raises(UndecodableRecord) as caught:
        codec.decode_features([values[0], b"[1, 2"])
    assert caught.value.index == 1 and "not JSON" in caught.value.message
    with pytest.raises(UndecodableRecord) as shape:
        codec.decode_features([b"[1, 2, 3]", b"[4, 5, 6]"])
    assert "needs 4" in shape.value.message
    value, key = codec.encode(np.ones((2, 2)), 3)
    assert json.loads(value) == {"data": [[1.0, 1.0], [1.0, 1.0]]} and json.loads(key) == 3
