"""The real local broker: partitions, exact offset ranges with assign, watermarks, group resume."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

pytestmark = pytest.mark.integration


def _create_topic(bootstrap: str, name: str, partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        fut.result(timeout=30)


def _produce(bootstrap: str, topic: str, n: int) -> dict[int, list[bytes]]:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i in range(n):
        producer.produce(topic, value=f"v{i}".encode(), partition=i % 3)
    assert producer.flush(30) == 0
    return {p: [f"v{i}".encode() for i in range(n) if i % 3 == p] for p in range(3)}


def test_three_partitions_watermarks_and_exact_ranges(stack, unique):
    topic = f"t-{unique}"
    _create_topic(stack.kafka_bootstrap, topic)
    sent = _produce(stack.kafka_bootstrap, topic, 300)

    consumer = Consumer(
        {
            "bootstrap.servers": stack.kafka_bootstrap,
            "group.id": f"g-{unique}",
            "enable.auto.commit": False,
        }
    )
    meta = consumer.list_topics(topic, timeout=10)
    assert len(meta.topics[topic].partitions) == 3
    for p in range(3):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        assert (low, high) == (0, len(sent[p]))

    # Offsets [10, 25) of each partition, exactly.
    consumer.assign([TopicPartition(topic, p, 10) for p in range(3)])
    got: dict[int, list[bytes]] = {0: [], 1: [], 2: []}
    done: set[int] = set()
    while len(done) < 3:
        for msg in consumer.consume(100, timeout=5):
            assert msg.error() is None
            p = msg.partition()
            if p in done:
                continue
            got[p].append(msg.value())
            if msg.offset() == 24:
                done.add(p)
                consumer.pause([TopicPartition(topic, p)])
    consumer.close()
    for p in range(3):
        assert got[p] == sent[p][10:25]


def test_consumer_group_commit_and_resume(stack, unique):
    topic, group = f"g-{unique}", f"grp-{unique}"
    _create_topic(stack.kafka_bootstrap, topic, partitions=1)
    _produce_one = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    for i in range(20):
        _produce_one.produce(topic, value=str(i).encode(), partition=0)
    _produce_one.flush(30)

    conf = {
        "bootstrap.servers": stack.kafka_bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    first = Consumer(conf)
    first.subscribe([topic])
    seen: list[bytes] = []
    while len(seen) < 8:
        seen += [m.value() for m in first.consume(8 - len(seen), timeout=10) if not m.error()]
    first.commit(asynchronous=False)
    first.close()

    second = Consumer(conf)
    second.subscribe([topic])
    rest: list[bytes] = []
    while len(rest) < 12:
        rest += [m.value() for m in second.consume(20, timeout=10) if not m.error()]
    second.close()
    assert [int(v) for v in seen + rest] == list(range(20))
