"""Live views of two kinds of topics: the results topic (per-epoch progress of every run) and an
inference deployment's output topic (its recent predictions).

A :class:`TopicTail` is one background consumer of one topic that never joins a group nor
commits (it assigns every partition itself and picks up partitions and topics that appear
later), from a start position on: ``since(seconds)`` for the results topic, so a page opened
mid-run still sees the first epochs, and ``last(n)`` per partition for predictions. Each
record goes to a handler that keeps a bounded summary; nothing is written anywhere.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition

from kafkaml.kafka import client_config

log = logging.getLogger("kml.dashboard")

StartAt = Callable[[Consumer, list[TopicPartition], float], list[TopicPartition]]
"""Where to start reading newly seen partitions (with their topic), given a Kafka timeout."""
METADATA_EVERY_S = 5.0
"""How often a tail looks for its topic and new partitions."""


def since(seconds: float) -> StartAt:
    """Start at the first record written in the last ``seconds`` (the end if there is none)."""

    def start(consumer: Consumer, parts: list[TopicPartition], timeout_s: float):
        stamp = int((time.time() - seconds) * 1000)
        asked = [TopicPartition(p.topic, p.partition, stamp) for p in parts]
        found = consumer.offsets_for_times(asked, timeout=timeout_s)
        return [
            TopicPartition(p.topic, p.partition, p.offset if p.offset >= 0 else OFFSET_END)
            for p in found
        ]

    return start


def last(count: int) -> StartAt:
    """Start ``count`` records before the end of each partition (its beginning if it has fewer)."""

    def start(consumer: Consumer, parts: list[TopicPartition], timeout_s: float):
        out = []
        for p in parts:
            low, high = consumer.get_watermark_offsets(p, timeout=timeout_s, cached=False)
            offset = max(low, high - count) if high >= 0 else OFFSET_BEGINNING
            out.append(TopicPartition(p.topic, p.partition, offset))
        return out

    return start


class TopicTail:
    """Hands every record of ``topic`` from ``start_at`` on to ``handle``, in a daemon thread."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        start_at: StartAt,
        handle: Callable[[Any], None],
        timeout_s: float = 30.0,
    ) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self._start_at, self._handle, self._timeout_s = start_at, handle, timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.problem: str | None = None
        """Why the tail cannot read right now (broker unreachable, topic missing), else None."""
        self.records = 0
        self.crashed: str | None = None

    def start(self) -> TopicTail:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"tail-{self.topic}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        consumer = Consumer(
            {
                **client_config(self.bootstrap),
                "group.id": f"kml-dashboard-{uuid.uuid4().hex}",  # assign only, never commits
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "socket.timeout.ms": 10000,
            }
        )
        assigned: set[int] = set()
        looked = 0.0
        try:
            while not self._stop.is_set():
                if time.monotonic() - looked > METADATA_EVERY_S:
                    looked = time.monotonic()
                    self._assign_new(consumer, assigned)
                if not assigned:
                    self._stop.wait(0.5)
                    continue
                for msg in consumer.consume(200, timeout=0.5):
                    if msg.error() is None:
                        self.records += 1
                        self._deliver(msg)
        except Exception as e:  # the thread must say why it ended; readiness reports it
            self.crashed = f"{type(e).__name__}: {e}"
            log.exception("tail stopped", extra={"fields": {"topic": self.topic}})
        finally:
            consumer.close()

    def _assign_new(self, consumer: Consumer, assigned: set[int]) -> None:
        try:
            md = consumer.list_topics(self.topic, timeout=self._timeout_s).topics.get(self.topic)
            if md is None or md.error is not None:
                self.problem = f"topic {self.topic} does not exist yet"
                return
            new = [
                TopicPartition(self.topic, p) for p in sorted(md.partitions) if p not in assigned
            ]
            if new:
                consumer.incremental_assign(self._start_at(consumer, new, self._timeout_s))
                assigned.update(p.partition for p in new)
            self.problem = None
        except KafkaException as e:
            reason = e.args[0].str() if e.args and hasattr(e.args[0], "str") else str(e)
            self.problem = f"Kafka at {self.bootstrap} unreachable: {reason}"

    def _deliver(self, msg: Any) -> None:
        try:
            self._handle(msg)
        except Exception as e:  # one odd record never stops the view
            log.warning(
                "record skipped",
                extra={
                    "fields": {
                        "topic": msg.topic(),
                        "partition": msg.partition(),
                        "offset": msg.offset(),
                        "reason": f"{type(e).__name__}: {e}",
                    }
                },
            )
