"""The local KafkaSource bridge: plays Knative's KafkaSource for the local functions.

It reads the KafkaSources of ``knative/base`` (kustomize build) and of
``<state_dir>/sources/*.yaml`` (re-read every ~2 s, so a local inference deployment is picked
up), resolves each sink to a local address and delivers every record as Knative's KafkaSource
dispatcher does: the same attributes and header bytes, retries, dead letters, ordering and
commits. What it cannot reproduce it logs at start (``LIMITATIONS``). Run it with
``python -m kml.dev.bridge`` (which also creates the topics the base sources follow, as a
cluster's KafkaTopics would); settings come from the ``KML_*`` environment.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from kafkaml.errors import KmlError
from kafkaml.kafka import client_config, ensure_topic
from kafkaml.settings import Settings
from kml.dev.bridge.consumer import SourceConsumer
from kml.dev.bridge.delivery import Deliverer, SinkResolver
from kml.dev.bridge.sources import Manifests, SourceSpec, read_manifests

log = logging.getLogger("kml.bridge")

DEFAULT_MANIFESTS = Path(__file__).resolve().parents[3] / "knative" / "base"

LIMITATIONS = (
    "spec.bootstrapServers and spec.net (TLS/SASL) are ignored: every source reads the local "
    "broker (KML_KAFKA_BOOTSTRAP)",
    "sinks resolve to local addresses (kml-register/kml-train ports, "
    "<state_dir>/services/<name>.json, KafkaSinks as local produces), not Knative addressables; "
    "cluster-local visibility, CACerts and OIDC audiences are not simulated",
    "spec.consumers and vreplica scheduling are ignored: one consumer per source",
    "no Knative Serving in front of the functions: no scale to zero, no activator, no 504 at "
    "timeoutSeconds (only the delivery timeout of each attempt applies)",
    "delivery.retryAfterMax is ignored (Retry-After is ignored, as by KafkaSource itself)",
    "the kafka-source dispatcher's tuning (rate limits, fetch sizes) and its cost (~0.2 ms of "
    "CPU per record) are not reproduced",
    "structured-mode records are re-serialised like Jackson (compact, raw UTF-8, doubles as "
    "Java prints them) but not byte for byte in every case (escapes, huge numbers)",
    "string keys that are not UTF-8 are decoded with replacement characters as Java does, "
    "but the number of '?' per malformed sequence can differ",
    "python -m kml.dev.bridge creates missing topics of the knative/base sources (on a "
    "cluster they are KafkaTopics)",
)


class Bridge:
    """Every source's consumer, kept in line with the manifests."""

    def __init__(
        self,
        settings: Settings,
        manifests_dir: Path = DEFAULT_MANIFESTS,
        commit_interval_s: float = 5.0,
        rescan_interval_s: float = 2.0,
        fixed_urls: dict[str, str] | None = None,
        create_topics: bool = False,
        tick_interval_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.tick_interval_s = tick_interval_s
        """Seconds between ``kml.stream.tick`` posts to kml-train (the PingSource's part)."""
        self.create_topics = create_topics
        self._topics_ensured: set[str] = set()
        self.manifests_dir = Path(manifests_dir)
        self.state_dir = Path(settings.state_dir)
        self.sources_dir = self.state_dir / "sources"
        self.status_file = self.state_dir / "bridge" / "status.json"
        self.commit_interval_s = commit_interval_s
        self.rescan_interval_s = rescan_interval_s
        self.fixed_urls = (
            fixed_urls
            if fixed_urls is not None
            else {
                "kml-register": f"http://127.0.0.1:{settings.register_port}",
                "kml-train": f"http://127.0.0.1:{settings.train_port}",
            }
        )
        self.resolver = SinkResolver(self.fixed_urls, self.state_dir / "services", {})
        self.consumers: dict[tuple[str, str], SourceConsumer] = {}
        self.problems: list[str] = []
        self._producer: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        for line in LIMITATIONS:
            log.warning("cannot reproduce: " + line)
        self._producer = Producer(
            {
                **client_config(self.settings.kafka),
                "enable.idempotence": True,
                "message.timeout.ms": int(self.settings.kafka_timeout_s * 1000),
            }
        )
        self.rescan()
        self._thread = threading.Thread(target=self._rescan_loop, name="bridge-rescan", daemon=True)
        self._thread.start()
        if self.tick_interval_s:
            threading.Thread(target=self._tick_loop, name="bridge-ticker", daemon=True).start()

    def _tick_loop(self) -> None:
        """Plays the PingSource ``kml-stream-tick``: a tick to train every interval."""
        import urllib.request

        from kafkaml.events import STREAM_TICK, new_event, to_http

        url = self.fixed_urls["kml-train"]
        while not self._stop.wait(self.tick_interval_s):
            headers, body = to_http(new_event(STREAM_TICK, "/kml/dev/bridge/ticker", {}))
            if self.settings.auth_token:  # train checks every call, ticks too
                headers["Authorization"] = f"Bearer {self.settings.auth_token}"
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.settings.request_timeout_s) as r:
                    log.info("stream tick", extra={"fields": {"status": r.status}})
            except OSError as e:  # train down or a window failed: the next tick tries again
                log.warning("stream tick failed", extra={"fields": {"reason": str(e)[:200]}})

    def stop(self, grace_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.rescan_interval_s + 5)
        for consumer in list(self.consumers.values()):
            consumer.stop_event.set()
        for key in list(self.consumers):
            self.consumers.pop(key).stop(grace_s)
        if self._producer is not None:
            self._producer.flush(self.settings.kafka_timeout_s)
            self._producer = None

    def rescan(self) -> None:
        """Start, restart or stop consumers so they match the manifests as they are now."""
        try:
            found = read_manifests(self.manifests_dir, self.sources_dir, self.settings.namespace)
        except (OSError, ValueError) as e:
            self._report([f"{self.manifests_dir}: {e}"])
            return
        self.resolver.kafka_sinks = found.kafka_sinks
        if self.create_topics:
            self._ensure_topics(found)
        wanted = self._unique(found)
        for key in [
            k
            for k, c in self.consumers.items()
            if k not in wanted or wanted[k] != c.spec or not c.alive()
        ]:
            log.info("stopping source", extra={"fields": {"source": key[1]}})
            self.consumers.pop(key).stop()
        for key, spec in wanted.items():
            if key not in self.consumers:
                self._start_source(spec)
        self._report(found.problems)

    def _ensure_topics(self, found: Manifests) -> None:
        """Create the topics the base manifests' sources follow (Kafka-ML's default control
        topic among them) unless they exist, once per topic."""
        base = str(self.manifests_dir)
        for spec in found.sources:
            for topic in spec.topics:
                if spec.origin != base or topic in self._topics_ensured:
                    continue
                try:
                    ensure_topic(self.settings.kafka, topic, 1)
                except Exception as e:  # Unavailable, or a timeout of the admin request
                    reason = e.message if isinstance(e, KmlError) else repr(e)
                    found.problems.append(f"{spec.origin}: topic {topic}: {reason}")
                    continue
                self._topics_ensured.add(topic)
                log.info("topic ready", extra={"fields": {"source": spec.name, "topic": topic}})

    def _unique(self, found: Manifests) -> dict[tuple[str, str], SourceSpec]:
        wanted: dict[tuple[str, str], SourceSpec] = {}
        for spec in found.sources:
            key = (spec.namespace, spec.name)
            if key in wanted:
                found.problems.append(
                    f"{spec.origin}: KafkaSource {spec.namespace}/{spec.name} "
                    f"is already defined in {wanted[key].origin}; ignored"
                )
                continue
            wanted[key] = spec
        return wanted

    def _start_source(self, spec: SourceSpec) -> None:
        deliverer = Deliverer(
            self.resolver,
            threading.Event(),
            self._producer,
            self.settings.kafka_timeout_s,
            token=self.settings.auth_token,
        )
        consumer = SourceConsumer(spec, self.settings.kafka, deliverer, self.commit_interval_s)
        self.consumers[consumer.key] = consumer
        log.info(
            "source started",
            extra={
                "fields": {
                    "source": spec.name,
                    "topics": list(spec.topics),
                    "group": spec.consumer_group,
                    "sink": str(spec.sink),
                    "sink_url": self.resolver.url(spec.sink),
                    "ordering": "ordered" if spec.ordered else "unordered",
                    "key_type": spec.key_type,
                    "retry": spec.delivery.retry,
                    "backoff": spec.delivery.backoff_policy,
                    "backoff_delay_s": spec.delivery.backoff_delay_s,
                    "dead_letter": str(spec.delivery.dead_letter),
                    "origin": spec.origin,
                }
            },
        )
        consumer.start()

    def _report(self, problems: list[str]) -> None:
        for p in problems:
            if p not in self.problems:
                log.error("manifest problem", extra={"fields": {"problem": p}})
        self.problems = problems
        status = {
            "pid": os.getpid(),
            "ts": time.time(),
            "problems": problems,
            "sources": [
                {
                    "name": c.spec.name,
                    "topics": list(c.spec.topics),
                    "group": c.spec.consumer_group,
                    "sink": self.resolver.url(c.spec.sink),
                    "assigned": sorted(f"{t}/{p}" for t, p in c.assigned),
                    "outcomes": c.outcomes,
                    "alive": c.alive(),
                }
                for c in self.consumers.values()
            ],
        }
        self.status_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, indent=1))
        tmp.replace(self.status_file)

    def _rescan_loop(self) -> None:
        while not self._stop.wait(self.rescan_interval_s):
            try:
                self.rescan()
            except Exception:
                log.exception("rescanning the manifests failed")


def read_status(state_dir: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(state_dir) / "bridge" / "status.json").read_text())
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> None:
    from kafkaml.web import configure_logging

    parser = argparse.ArgumentParser(prog="python -m kml.dev.bridge", description=__doc__)
    parser.add_argument(
        "--manifests",
        type=Path,
        default=DEFAULT_MANIFESTS,
        help="kustomization whose KafkaSources to play (default: knative/base)",
    )
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    tick_s = float(os.environ.get("KML_STREAM_TICK_S", "60"))
    bridge = Bridge(settings, args.manifests, create_topics=True, tick_interval_s=tick_s)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    bridge.start()
    log.info("bridge running", extra={"fields": {"sources": [k[1] for k in bridge.consumers]}})
    stopping.wait()
    log.info("bridge stopping")
    bridge.stop()
