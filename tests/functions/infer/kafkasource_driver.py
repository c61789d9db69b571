"""A small stand-in for KafkaSource: consume a topic, POST each record as a binary CloudEvent.

Attributes as Knative's dispatcher sets them for a record that is not a CloudEvent: id
``partition:<P>/offset:<O>``, source ``.../kafkasources/<name>#<topic>``, ``key`` and
``partitionkey`` (Base64: the inference KafkaSource's key type is byte-array), one
``kafkaheader<name>`` per header, ``knativekafkapartition``/``offset``.
No retries: the test wants to see every status.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from http.client import HTTPConnection
from urllib.parse import urlsplit

from confluent_kafka import Consumer, TopicPartition


@dataclass(frozen=True)
class Delivery:
    partition: int
    offset: int
    key: bytes | None
    status: int
    body: str


def ce_headers(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    headers: list[tuple[str, bytes]] | None,
    timestamp_ms: int,
    source_name: str = "kml-infer-test",
) -> dict[str, str]:
    out = {
        "ce-specversion": "1.0",
        "ce-id": f"partition:{partition}/offset:{offset}",
        "ce-source": f"/apis/v1/namespaces/default/kafkasources/{source_name}#{topic}",
        "ce-type": "dev.knative.kafka.event",
        "ce-subject": f"partition:{partition}#{offset}",
        "ce-time": datetime.fromtimestamp(timestamp_ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "ce-knativekafkapartition": str(partition),
        "ce-knativekafkaoffset": str(offset),
        "Prefer": "reply",
        "Kn-Namespace": "default",
    }
    if key is not None:
        out["ce-key"] = out["ce-partitionkey"] = base64.b64encode(key).decode()
    for name, value in headers or []:
        if name.lower() == "content-type":
            out["ce-datacontenttype"] = value.decode().lower()
            continue
        out["ce-kafkaheader" + re.sub(r"[^a-z0-9]", "", name.lower())] = value.decode()
    return out


def deliver_topic(
    bootstrap: str,
    topic: str,
    url: str,
    expected: int,
    *,
    token: str,
    concurrency: int = 16,
    timeout_s: float = 60.0,
) -> list[Delivery]:
    """Deliver the first ``expected`` records of every partition of ``topic`` to ``url``,
    each carrying ``token`` as the local bridge carries its ``deliver`` token."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"driver-{topic}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    local = threading.local()
    deliveries: list[Delivery] = []

    target = urlsplit(url)

    def post(msg) -> Delivery:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = HTTPConnection(target.hostname, target.port, timeout=60)
        headers = ce_headers(
            topic, msg.partition(), msg.offset(), msg.key(), msg.headers(), msg.timestamp()[1]
        )
        headers["Authorization"] = f"Bearer {token}"
        conn.request("POST", target.path or "/", body=msg.value() or b"", headers=headers)
        r = conn.getresponse()
        return Delivery(msg.partition(), msg.offset(), msg.key(), r.status, r.read().decode())

    try:
        with ThreadPoolExecutor(concurrency) as pool:
            seen = 0
            deadline = time.monotonic() + timeout_s
            while seen < expected:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {seen} of {expected} records on {topic}")
                batch = [m for m in consumer.consume(500, timeout=1.0) if m.error() is None]
                if batch:
                    deadline = time.monotonic() + timeout_s  # bounded silence, not total time
                seen += len(batch)
                deliveries.extend(pool.map(post, batch))
    finally:
        consumer.close()
    return deliveries
