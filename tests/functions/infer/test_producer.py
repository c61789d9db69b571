"""The infer producer on the real broker: ``send_async`` futures resolve on their own loop only
once Kafka acknowledged each record, with where it landed; refusals are errors, not hangs."""

from __future__ import annotations

import asyncio
import threading

import pytest

from functions.infer.producer import DeliveringProducer, Delivery
from kafkaml.errors import PayloadTooLarge
from kafkaml.kafka import ensure_topic, read_offset_ranges
from kafkaml.wire import OffsetRange


def test_concurrent_sends_on_two_loops_each_land_once_where_their_future_says(stack, unique):
    topic = f"producer-{unique}"
    ensure_topic(stack.kafka_bootstrap, topic, 2)
    producer = DeliveringProducer(stack.kafka_bootstrap, timeout_s=20)
    landed: dict[str, list[tuple[bytes, Delivery]]] = {}

    async def send_many(name: str) -> None:
        loop = asyncio.get_running_loop()

        async def one(i: int) -> tuple[bytes, Delivery]:
            key = f"{name}-{i}".encode()
            future = producer.send_async(topic, b"v-" + key, key, [("h", b"1")])
            done = await future
            assert asyncio.get_running_loop() is loop  # resolved on the loop that awaits
            return key, done

        landed[name] = await asyncio.gather(*(one(i) for i in range(300)))

    try:
        threads = [
            threading.Thread(target=lambda n=n: asyncio.run(send_many(n))) for n in ("a", "b")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        producer.close()
    deliveries = [d for name in ("a", "b") for _, d in landed[name]]
    assert len(deliveries) == 600 and {d.topic for d in deliveries} == {topic}
    assert len({(d.partition, d.offset) for d in deliveries}) == 600
    ends = {p: 1 + max(d.offset for d in deliveries if d.partition == p) for p in (0, 1)}
    records = read_offset_ranges(
        stack.kafka_bootstrap, [OffsetRange(topic, p, 0, end) for p, end in ends.items()]
    )
    assert sorted(records.keys) == sorted(key for n in ("a", "b") for key, _ in landed[n])
    assert len(records) == 600  # every record once: nothing else in the topic


def test_a_record_kafka_refuses_is_a_413_and_close_waits_for_what_is_outstanding(stack, unique):
    topic = f"producer-big-{unique}"
    ensure_topic(stack.kafka_bootstrap, topic, 1)
    producer = DeliveringProducer(stack.kafka_bootstrap, timeout_s=20)

    async def run() -> tuple[list, Delivery]:
        small = [producer.send_async(topic, b"x", b"k", []) for _ in range(50)]
        with pytest.raises(PayloadTooLarge):
            await producer.send_async(topic, b"\0" * 3_000_000, b"big", [])
        return await asyncio.gather(*small), await producer.send_async(topic, b"y", b"k", [])

    answers: list = []
    # A thread of its own, as the worker's loop has: the session's browser tests may hold an
    # event loop in the main thread.
    loop_thread = threading.Thread(target=lambda: answers.append(asyncio.run(run())))
    try:
        loop_thread.start()
        loop_thread.join(60)
        assert answers, "the loop thread did not finish (its error is printed above)"
        [(small, last)] = answers
    finally:
        producer.close()
    assert len({d.offset for d in small}) == 50 and last.offset > max(d.offset for d in small)
