"""A small offset range reads in the time its bytes take, not in the broker's fetch wait."""

from __future__ import annotations

import time

import numpy as np
import pytest

from kafkaml.kafka import ConfirmingProducer, ensure_topic, read_offset_ranges

pytestmark = pytest.mark.integration


def _best_of(n: int, read) -> float:
    best = float("inf")
    for _ in range(n):
        started = time.perf_counter()
        read()
        best = min(best, time.perf_counter() - started)
    return best


def test_digits_sized_read_on_three_partitions_does_not_wait_for_the_broker(stack, unique):
    """1,797 records of 64 float32 (the digits data set, ~460 KB) on 3 partitions: with the
    broker's default fetch wait (500 ms) each partition after the first waited for the previous
    one's empty fetch, 1.1 s in all; the reader asks for 5 ms."""
    topic = f"range-speed-{unique}"
    ensure_topic(stack.kafka_bootstrap, topic, 3)
    rng = np.random.default_rng(0)
    producer = ConfirmingProducer(stack.kafka_bootstrap)
    for i, row in enumerate(rng.random((1797, 64), dtype=np.float32)):
        producer.produce(topic, row.tobytes(), bytes([i % 10]), partition=i % 3)
    producer.flush()
    ranges = producer.ranges(topic)

    def ours():
        assert len(read_offset_ranges(stack.kafka_bootstrap, ranges, timeout_s=30)) == 1797

    def broker_default():
        records = read_offset_ranges(
            stack.kafka_bootstrap, ranges, timeout_s=30, config={"fetch.wait.max.ms": 500}
        )
        assert len(records) == 1797

    fast, slow = _best_of(3, ours), _best_of(2, broker_default)
    assert slow >= 0.9, f"the 500 ms fetch wait no longer shows ({slow:.2f}s): test is moot"
    assert fast < 0.5, f"1,797 records took {fast:.2f}s (with the broker's wait: {slow:.2f}s)"
