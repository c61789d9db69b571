"""Test helpers for the bridge: a recording HTTP sink with scripted answers, manifests, Kafka."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from kafkaml.settings import Settings
from kml.dev.bridge import Bridge

NAMESPACE = "kml-test"


@dataclass(frozen=True)
class Received:
    at: float
    path: str
    method: str
    headers: dict[str, str]
    body: bytes

    @property
    def ce(self) -> dict[str, str]:
        """The ce-* attributes by name (content-type excluded)."""
        return {k[3:]: v for k, v in self.headers.items() if k.startswith("ce-")}

    @property
    def record(self) -> tuple[str, str]:
        return self.ce.get("knativekafkapartition", ""), self.ce.get("knativekafkaoffset", "")


Answer = tuple[int, dict[str, str], bytes]
DROP = (-1, {}, b"")
"""Close the connection without answering (a connection error for the bridge)."""


class Recorder:
    """An HTTP sink that records every request and answers what ``script`` says.

    Header values are recorded as ``http.server`` reads them: each byte one Latin-1 character,
    so a value sent as UTF-8 would show up as two characters per accented letter. Requests for
    which ``hold`` is true wait until ``let_through(n)`` or ``release`` lets them go.
    """

    def __init__(
        self,
        script: Callable[[Received, int], Answer] | None = None,
        hold: Callable[[Received], bool] | None = None,
    ) -> None:
        self.script = script or (lambda req, n: (200, {}, b""))
        self.hold = hold or (lambda req: False)
        self.release = threading.Event()
        self._gate = threading.Semaphore(0)
        self.received: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                req = Received(
                    time.monotonic(),
                    self.path,
                    "POST",
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                recorder._handle(self, req)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _handle(self, handler: BaseHTTPRequestHandler, req: Received) -> None:
        with self._lock:
            self.received.append(req)
            attempt = sum(
                1
                for r in self.received
                if r.ce.get("id") == req.ce.get("id") and r.ce.get("source") == req.ce.get("source")
            )
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.hold(req):
                deadline = time.monotonic() + 60
                while not self.release.is_set() and time.monotonic() < deadline:
                    if self._gate.acquire(timeout=0.02):
                        break
            status, headers, body = self.script(req, attempt)
        finally:
            with self._lock:
                self.in_flight -= 1
        if status == -1:
            handler.close_connection = True
            handler.connection.shutdown(2)
            return
        if status == -2:
            time.sleep(float(headers.get("sleep", "1")))
            status, headers = 200, {}
        handler.send_response(status)
        for k, v in headers.items():
            handler.send_header(k, v)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def let_through(self, n: int = 1) -> None:
        """Let ``n`` held requests answer."""
        for _ in range(n):
            self._gate.release()

    def settled(self, quiet: float = 0.5, timeout: float = 20.0) -> int:
        """The number in flight once no request has arrived or answered for ``quiet`` seconds
        (a loaded machine may take longer than any fixed sleep to send a whole batch)."""
        deadline = time.monotonic() + timeout
        seen = (self.in_flight, len(self.received))
        since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.02)
            now = (self.in_flight, len(self.received))
            if now != seen:
                seen, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return self.in_flight
        raise AssertionError(f"requests still coming after {timeout}s: {seen}")

    def wait_for(
        self, n: int, timeout: float = 30.0, where: Callable[[Received], bool] = lambda r: True
    ) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [r for r in list(self.received) if where(r)]
            if len(got) >= n:
                return got
            time.sleep(0.02)
        got = [r for r in list(self.received) if where(r)]
        raise AssertionError(f"expected {n} requests within {timeout}s, got {len(got)}")

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def kafka_source(
    name: str,
    topics: list[str],
    sink: str,
    *,
    delivery: Any = "default",
    ordering: str | None = "ordered",
    labels: dict[str, str] | None = None,
    ce_overrides: dict[str, str] | None = None,
    group: str | None = None,
    dead_letter: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A KafkaSource manifest; ``delivery=None`` leaves ``spec.delivery`` out."""
    spec: dict[str, Any] = {
        "bootstrapServers": ["cluster-kafka-bootstrap:9092"],
        "topics": topics,
        "consumerGroup": group or f"g-{name}",
        "initialOffset": "earliest",
        "sink": {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": sink}},
    }
    if ordering:
        spec["ordering"] = ordering
    if delivery == "default":
        delivery = {
            "retry": 2,
            "backoffPolicy": "exponential",
            "backoffDelay": "PT0.01S",
            "timeout": "PT5S",
        }
    if delivery is not None:
        spec["delivery"] = dict(delivery)
        if dead_letter:
            spec["delivery"]["deadLetterSink"] = {"ref": dead_letter}
    if ce_overrides:
        spec["ceOverrides"] = {"extensions": ce_overrides}
    meta: dict[str, Any] = {"name": name, "namespace": NAMESPACE}
    if labels:
        meta["labels"] = labels
    return {
        "apiVersion": "sources.knative.dev/v1beta1",
        "kind": "KafkaSource",
        "metadata": meta,
        "spec": spec,
    }


def kafka_sink(name: str, topic: str) -> dict[str, Any]:
    return {
        "apiVersion": "eventing.knative.dev/v1alpha1",
        "kind": "KafkaSink",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"topic": topic, "bootstrapServers": ["x:9092"], "contentMode": "binary"},
    }


def write_kustomization(root: Path, docs: list[dict[str, Any]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "resources.yaml").write_text(yaml.safe_dump_all(docs))
    (root / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["resources.yaml"],
            }
        )
    )
    return root


def start_bridge(
    settings: Settings,
    tmp_path: Path,
    docs: list[dict[str, Any]],
    urls: dict[str, str],
    commit_interval_s: float = 0.3,
) -> Bridge:
    manifests = write_kustomization(tmp_path / "manifests", docs)
    state = settings.replace(state_dir=str(tmp_path / "state"))
    bridge = Bridge(
        state,
        manifests,
        commit_interval_s=commit_interval_s,
        rescan_interval_s=0.5,
        fixed_urls=urls,
    )
    bridge.start()
    return bridge


def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        fut.result(timeout=30)


def produce(bootstrap: str, topic: str, records: list[dict[str, Any]]) -> None:
    """Each record: value, and optionally key, headers, partition, timestamp (ms)."""
    producer = Producer({"bootstrap.servers": bootstrap})
    for r in records:
        producer.produce(
            topic,
            value=r.get("value"),
            key=r.get("key"),
            headers=r.get("headers"),
            partition=r.get("partition", 0),
            timestamp=r.get("timestamp", 0),
        )
    assert producer.flush(30) == 0


def committed(bootstrap: str, group: str, topic: str, partitions: int = 1) -> list[int]:
    """The group's committed offsets (the coordinator may still be moving: asked again)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        for attempt in range(20):
            try:
                tps = consumer.committed(
                    [TopicPartition(topic, p) for p in range(partitions)], timeout=10
                )
                return [tp.offset for tp in tps]
            except KafkaException:
                if attempt == 19:
                    raise
                time.sleep(0.25)
        raise AssertionError("unreachable")
    finally:
        consumer.close()


def eventually(check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"not true within {timeout}s: {what} (last: {last!r})")
