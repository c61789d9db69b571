"""The exact offset-range reader and the confirming producer, on the real local broker."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from kafkaml.errors import Unavailable
from kafkaml.kafka import (
    ConfirmingProducer,
    OffsetRangeUnavailable,
    end_offsets,
    ensure_topic,
    read_offset_ranges,
)
from kafkaml.wire import OffsetRange

pytestmark = pytest.mark.integration


def _fill(bootstrap: str, topic: str, n: int, partitions: int = 3) -> ConfirmingProducer:
    ensure_topic(bootstrap, topic, partitions)
    producer = ConfirmingProducer(bootstrap, timeout_s=20)
    for i in range(n):
        producer.produce(topic, f"v{i}".encode(), f"k{i}".encode(), partition=i % partitions)
    producer.flush()
    return producer


def test_reads_exactly_the_ranges_in_range_order(stack, unique):
    topic = f"ranges-{unique}"
    producer = _fill(stack.kafka_bootstrap, topic, 300)
    assert producer.delivered == 300
    assert producer.ranges(topic) == [OffsetRange(topic, p, 0, 100) for p in range(3)]
    ranges = [
        OffsetRange(topic, 2, 95, 100),
        OffsetRange(topic, 0, 10, 25),
        OffsetRange(topic, 1, 0, 0),
    ]
    got = read_offset_ranges(stack.kafka_bootstrap, ranges, timeout_s=10, batch_size=7)
    # partition p holds values i with i % 3 == p, at offset i // 3
    expected = [f"v{o * 3 + 2}" for o in range(95, 100)] + [f"v{o * 3}" for o in range(10, 25)]
    assert [v.decode() for v in got.values] == expected
    assert [k.decode() for k in got.keys] == [e.replace("v", "k") for e in expected]
    assert got.counts == {str(ranges[0]): 5, str(ranges[1]): 15, str(ranges[2]): 0}
    assert end_offsets(stack.kafka_bootstrap, topic) == {0: 100, 1: 100, 2: 100}


def test_ranges_the_broker_does_not_hold_are_named(stack, unique):
    topic = f"gone-{unique}"
    _fill(stack.kafka_bootstrap, topic, 30, partitions=1)
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    for fut in admin.delete_records([TopicPartition(topic, 0, 10)]).values():
        fut.result(timeout=30)
    ranges = [
        OffsetRange(topic, 0, 5, 40),
        OffsetRange(topic, 3, 0, 1),
        OffsetRange(f"missing-{unique}", 0, 0, 1),
    ]
    with pytest.raises(OffsetRangeUnavailable) as caught:
        read_offset_ranges(stack.kafka_bootstrap, ranges, timeout_s=10)
    err = caught.value
    assert err.status == 422 and len(err.problems) == 4
    text = "\n".join(err.problems)
    assert f"{topic}:0:5:40: offsets 5..9 were deleted" in text
    assert "end 40 is beyond the high watermark 30" in text
    assert "has no partition 3" in text and "does not exist" in text
    ok = read_offset_ranges(stack.kafka_bootstrap, [OffsetRange(topic, 0, 10, 30)], timeout_s=10)
    assert len(ok) == 20


def test_unreachable_broker_is_transient_and_bounded():
    started = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        read_offset_ranges("127.0.0.1:1", [OffsetRange("t", 0, 0, 1)], timeout_s=2)
    assert caught.value.status == 503 and "127.0.0.1:1" in caught.value.message
    producer = ConfirmingProducer("127.0.0.1:1", timeout_s=2)
    producer.produce("t", b"x")
    with pytest.raises(Unavailable):
        producer.flush()
    assert time.monotonic() - started < 15
