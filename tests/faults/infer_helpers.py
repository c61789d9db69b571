"""Helpers of the inference fault tests: the bridge playing KafkaSource, a publisher that knows
what Kafka acknowledged, and a tally of what came out (predictions, dead letters, repeats)."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from confluent_kafka import Consumer, Producer, TopicPartition

from kafkaml.settings import Settings
from kml.dev.bridge import Bridge

Where = tuple[int, int]
"""An input record's (partition, offset)."""


@contextmanager
def running_bridge(settings: Settings, root: Path) -> Iterator[Bridge]:
    """The local KafkaSource bridge on ``settings.state_dir``, with the dead-letter KafkaSink
    the inference sources name (as ``knative/base`` declares it on a cluster)."""
    root.mkdir(parents=True, exist_ok=True)
    sink = {
        "apiVersion": "eventing.knative.dev/v1alpha1",
        "kind": "KafkaSink",
        "metadata": {"name": settings.dlq_topic, "namespace": settings.namespace},
        "spec": {
            "topic": settings.dlq_topic,
            "bootstrapServers": [settings.kafka_bootstrap],
            "contentMode": "binary",
        },
    }
    (root / "sink.yaml").write_text(yaml.safe_dump(sink))
    (root / "kustomization.yaml").write_text(
        yaml.safe_dump({"apiVersion": "kustomize.config.k8s.io/v1beta1",
                        "kind": "Kustomization", "resources": ["sink.yaml"]})
    )  # fmt: skip
    bridge = Bridge(settings, root, commit_interval_s=0.5, rescan_interval_s=0.5, fixed_urls={})
    bridge.start()
    try:
        yield bridge
    finally:
        bridge.stop()


@dataclass
class Published:
    """Records Kafka acknowledged, by where they landed."""

    good: dict[Where, bytes] = field(default_factory=dict)
    bad: dict[Where, bytes] = field(default_factory=dict)
    failed: int = 0


def publish_paced(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes, bytes, bool]],
    seconds: float,
    published: Published,
) -> None:
    """Produce ``(value, key, good)`` records evenly over ``seconds``; record where each landed
    once acknowledged (the producer keeps retrying through a broker outage)."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5,
         "message.timeout.ms": 120_000}
    )  # fmt: skip
    lock = threading.Lock()

    def landed(good: bool):
        def report(err, msg) -> None:
            with lock:
                if err is not None:
                    published.failed += 1
                else:
                    target = published.good if good else published.bad
                    target[(msg.partition(), msg.offset())] = msg.key()

        return report

    started = time.monotonic()
    for i, (value, key, good) in enumerate(records):
        pause = started + seconds * i / len(records) - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        producer.produce(topic, value=value, key=key, on_delivery=landed(good))
        producer.poll(0)
    assert producer.flush(150) == 0


def _where(headers: list[tuple[str, bytes]] | None) -> Where | None:
    h = dict(headers or [])
    for p, o in (
        ("kml-input-partition", "kml-input-offset"),  # written by infer
        ("ce_knativekafkapartition", "ce_knativekafkaoffset"),  # the source's dead-letter sink
    ):
        if p in h and o in h:
            return int(h[p]), int(h[o])
    return None


@dataclass
class Tally:
    """What came out for the inputs: one prediction or one dead letter each, and repeats."""

    predicted: Counter = field(default_factory=Counter)
    dead_by_function: Counter = field(default_factory=Counter)
    dead_by_source: Counter = field(default_factory=Counter)

    def handled(self) -> set[Where]:
        return set(self.predicted) | set(self.dead_by_function) | set(self.dead_by_source)

    def duplicates(self) -> int:
        out = self.predicted + self.dead_by_function + self.dead_by_source
        return sum(n - 1 for n in out.values())

    def figures(self, published: Published) -> dict[str, int]:
        sent = set(published.good) | set(published.bad)
        return {
            "in": len(sent),
            "good_in": len(published.good),
            "bad_in": len(published.bad),
            "outputs": sum(self.predicted.values()),
            "dlq_by_function": sum(self.dead_by_function.values()),
            "dlq_by_source": sum(self.dead_by_source.values()),
            "duplicates": self.duplicates(),
            "lost": len(sent - self.handled()),
        }


def collect(
    bootstrap: str,
    output_topic: str,
    dlq_topic: str,
    expected: set[Where],
    timeout_s: float,
    settle_s: float = 2.0,
) -> Tally:
    """Read the output and dead-letter topics until every expected input is accounted for (then
    ``settle_s`` more, to see repeats), or ``timeout_s``."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"tally-{uuid.uuid4()}",
         "enable.auto.commit": False}
    )  # fmt: skip
    assigned: set[tuple[str, int]] = set()

    def follow_new_partitions() -> None:  # a topic may appear (auto-created) while we wait
        new = []
        for topic in (output_topic, dlq_topic):
            meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
            for p in meta.partitions if meta is not None and meta.error is None else ():
                if (topic, p) not in assigned:
                    assigned.add((topic, p))
                    new.append(TopicPartition(topic, p, 0))
        if new:
            consumer.incremental_assign(new)

    tally = Tally()
    deadline = time.monotonic() + timeout_s
    settle_until = None
    looked = 0.0
    try:
        while time.monotonic() < deadline:
            if time.monotonic() - looked > 2.0:
                follow_new_partitions()
                looked = time.monotonic()
            for m in consumer.consume(1000, timeout=0.5):
                if m.error() is not None:
                    continue
                where = _where(m.headers())
                if where is None:
                    continue
                if m.topic() == output_topic:
                    tally.predicted[where] += 1
                elif "kml-error" in dict(m.headers() or []):
                    tally.dead_by_function[where] += 1
                else:
                    tally.dead_by_source[where] += 1
            if expected <= tally.handled():
                settle_until = settle_until or time.monotonic() + settle_s
                if time.monotonic() > settle_until:
                    break
    finally:
        consumer.close()
    return tally
