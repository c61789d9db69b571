"""The datasource SDK: records, delivery-report ranges and the control message, on a real broker."""

from __future__ import annotations

import json

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from kafkaml.kafka import ensure_topic, read_offset_ranges
from kafkaml.sink import AvroSink, JsonSink, RawSink
from kafkaml.wire import codec_for, parse_control_message

pytestmark = pytest.mark.integration


def _control_records(bootstrap: str, topic: str) -> list:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "t"})
    try:
        high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
        consumer.assign([TopicPartition(topic, 0, 0)])
        out = []
        for _ in range(30):
            out += [m for m in consumer.consume(10, timeout=1) if m.error() is None]
            if len(out) >= high:
                break
        return out
    finally:
        consumer.close()


def test_raw_sink_ranges_come_from_delivery_reports(stack, unique):
    topic, control = f"raw-{unique}", f"ctl-{unique}"
    ensure_topic(stack.kafka_bootstrap, topic, 2)
    other = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    for p in (0, 1):  # records that are not ours, before the sink starts
        for _ in range(5):
            other.produce(topic, b"foreign", partition=p)
    other.flush(10)

    x = np.arange(40 * 6, dtype=np.float32).reshape(40, 2, 3)
    y = np.arange(40, dtype=np.int64)
    with RawSink(
        stack.kafka_bootstrap,
        topic,
        "dep-1",
        data_type="float32",
        label_type="int64",
        data_reshape="2 3",
        label_reshape="1",
        validation_rate=0.2,
        control_topic=control,
    ) as sink:
        sink.send_batch(x, y)
    msg = sink.control_message
    assert msg.total_msg == 40 and all(r.start == 5 for r in msg.ranges)
    assert sum(r.count for r in msg.ranges) == 40

    [record] = _control_records(stack.kafka_bootstrap, control)
    assert record.key() == b"dep-1"
    parsed = parse_control_message(record.value(), record.key())
    assert parsed == msg
    data = read_offset_ranges(stack.kafka_bootstrap, parsed.ranges, timeout_s=10)
    codec = codec_for(parsed.input_format, parsed.input_config)
    features, labels = codec.decode_features(data.values), codec.decode_labels(data.keys)
    order = np.argsort(labels[:, 0])
    assert np.array_equal(features[order], x) and labels[order, 0].tolist() == list(range(40))


def test_raw_sink_infers_config_and_writes_kafka_ml_key(stack, unique):
    control = f"ctl-{unique}"
    sink = RawSink(
        boostrap_servers=stack.kafka_bootstrap,
        topic=f"inf-{unique}",
        deployment_id=9,
        control_topic=control,
        kafka_ml_key=True,
    )
    for i in range(3):
        sink.send(np.full((4, 4), i, dtype=np.uint8), np.uint8(i))
    msg = sink.close()
    assert msg.input_config == {
        "data_type": "uint8",
        "label_type": "uint8",
        "data_reshape": "4 4",
        "label_reshape": "1",
    }
    [record] = _control_records(stack.kafka_bootstrap, control)
    assert record.key() == b"\x09"
    assert parse_control_message(record.value(), record.key()).deployment_id == "9"


def test_avro_and_json_sinks_round_trip(stack, unique):
    data_schema = {
        "type": "record",
        "name": "d",
        "fields": [{"name": "a", "type": "float"}, {"name": "b", "type": "int"}],
    }
    label_schema = {"type": "record", "name": "l", "fields": [{"name": "y", "type": "int"}]}
    avro = AvroSink(
        stack.kafka_bootstrap,
        f"avro-{unique}",
        "dep-2",
        data_scheme=data_schema,
        label_scheme=label_schema,
        control_topic=f"ctl-{unique}",
    )
    for i in range(4):
        avro.send_avro({"a": i / 2, "b": i}, {"y": i % 2})
    avro_msg = avro.close()
    jsink = JsonSink(
        stack.kafka_bootstrap,
        f"json-{unique}",
        "dep-2",
        data_reshape="3",
        label_type="int64",
        control_topic=f"ctl-{unique}",
    )
    jsink.send_batch(np.eye(3), [0, 1, 2])
    json_msg = jsink.close()
    for msg, first_row, labels in (
        (avro_msg, [0.0, 0.0], [0, 1, 0, 1]),
        (json_msg, [1.0, 0.0, 0.0], [[0], [1], [2]]),
    ):
        data = read_offset_ranges(stack.kafka_bootstrap, msg.ranges, timeout_s=10)
        codec = codec_for(msg.input_format, json.loads(json.dumps(msg.input_config)))
        assert codec.decode_features(data.values)[0].tolist() == first_row
        assert codec.decode_labels(data.keys).tolist() == labels


def test_close_without_records_sends_no_control_message(stack, unique):
    sink = RawSink(
        stack.kafka_bootstrap,
        f"empty-{unique}",
        "d",
        data_type="uint8",
        label_type="uint8",
        control_topic=f"ctl-{unique}",
    )
    with pytest.raises(Exception, match="nothing to train on"):
        sink.close()
