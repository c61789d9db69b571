"""``make demo``: bring the local stack up and show Kafka and MinIO doing real work."""

from __future__ import annotations

import sys
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from rich.console import Console

from kafkaml.dev.stack import Stack
from kafkaml.settings import Settings
from storage.objects import ObjectStore

console = Console()


def step(text: str) -> None:
    console.print(f"[bold cyan]==>[/] {text}")


def smoke(settings: Settings) -> None:
    topic = f"demo-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    for fut in admin.create_topics([NewTopic(topic, 3, 1)]).values():
        fut.result(timeout=30)
    step(f"created topic {topic} with 3 partitions")

    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True})
    for i in range(30):
        producer.produce(topic, key=str(i).encode(), value=f"record {i}".encode(), partition=i % 3)
    assert producer.flush(30) == 0
    step("produced 30 records, 10 per partition, all acknowledged by the broker")

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": topic,
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
    got = []
    deadline = time.monotonic() + 30
    while len(got) < 30 and time.monotonic() < deadline:
        got += [m for m in consumer.consume(100, timeout=1) if not m.error()]
    consumer.close()
    by_partition = {p: sum(1 for m in got if m.partition() == p) for p in range(3)}
    step(f"consumed {len(got)} records back with assign(): per partition {by_partition}")

    store = ObjectStore.from_settings(settings)
    key = f"demo/{topic}.txt"
    store.put(key, b"hello from the demo")
    body = store.get(key).body.decode()
    step(f"wrote and read s3://{settings.bucket}/{key} in MinIO: {body!r}")


def main() -> int:
    settings = Settings.from_env()
    step("bringing the local stack up (first run fetches Kafka with mvn and builds MinIO with go)")
    started = time.monotonic()
    Stack(settings).up(on_started=lambda p: console.print(f"    {p.name:<10} {p.address}"))
    step(f"stack ready in {time.monotonic() - started:.1f}s")
    smoke(settings)
    console.print("\nThe stack keeps running: `kml dev status` shows it, `kml dev down` stops it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
