"""One KafkaSource played locally: consume with its group, dispatch, commit contiguous offsets.

The consumer is touched only by the loop thread; deliveries run on a thread pool and report
back through a queue. Ordered sources keep one event in flight per partition. Unordered ones
send every record of a poll batch (up to 50) at once and stop polling while 50 or more are in
flight, so up to 99 can be in flight (49 plus a whole batch). Finished offsets are committed
every ``commit_interval_s``, on revocation and at stop; a delivery cut short by a stop is not
finished, so it is delivered again next time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from kafkaml.kafka import client_config
from kml.dev.bridge.delivery import Deliverer, Outcome
from kml.dev.bridge.events import Record, record_to_event
from kml.dev.bridge.offsets import OffsetTracker
from kml.dev.bridge.sources import UNORDERED_IN_FLIGHT, UNORDERED_POLL_BATCH, SourceSpec

log = logging.getLogger("kml.bridge")

PAUSE_ABOVE = 200
RESUME_BELOW = 50
"""Ordered sources: a partition's local queue bounds (records waiting for their turn)."""
ORDERED_POLL_BATCH = 100

TP = tuple[str, int]


class SourceConsumer:
    """The consumer loop of one source, in its own thread."""

    def __init__(
        self,
        spec: SourceSpec,
        bootstrap: str,
        deliverer: Deliverer,
        commit_interval_s: float = 5.0,
        poll_timeout_s: float = 0.05,
    ) -> None:
        self.spec = spec
        self.bootstrap = bootstrap
        self.deliverer = deliverer
        self.commit_interval_s = commit_interval_s
        self.poll_timeout_s = poll_timeout_s
        self.stop_event = deliverer.stop
        self.tracker = OffsetTracker()
        self.assigned: set[TP] = set()
        self.outcomes: dict[str, int] = {o.value: 0 for o in Outcome}
        self._queues: dict[TP, deque[Record]] = {}
        self._in_flight: dict[TP, int] = {}
        self._paused: set[TP] = set()
        self._resume_owed: list[TopicPartition] = []
        self._done: queue.Queue[tuple[TP, int, Outcome]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._consumer: Any = None
        self._unknown_topics_logged: set[str] = set()

    @property
    def key(self) -> tuple[str, str]:
        return self.spec.namespace, self.spec.name

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"source-{self.spec.name}", daemon=True
        )
        self._thread.start()

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop consuming; wait up to ``grace_s`` for deliveries in flight, commit, leave."""
        self._grace_s = grace_s
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(grace_s + 15)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the loop -------------------------------------------------------------------------------
    def _run(self) -> None:
        spec = self.spec
        self._consumer = Consumer(
            {
                **client_config(self.bootstrap),
                "group.id": spec.consumer_group,
                "enable.auto.commit": False,
                "auto.offset.reset": spec.initial_offset,
                "session.timeout.ms": 10000,
                "topic.metadata.refresh.interval.ms": 2000,
                "allow.auto.create.topics": False,
            }
        )
        self._consumer.subscribe(
            list(spec.topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        pool = ThreadPoolExecutor(
            max_workers=UNORDERED_IN_FLIGHT + UNORDERED_POLL_BATCH,
            thread_name_prefix=f"deliver-{spec.name}",
        )
        batch = ORDERED_POLL_BATCH if spec.ordered else UNORDERED_POLL_BATCH
        last_commit = time.monotonic()
        try:
            while not self.stop_event.is_set():
                if self._holding():  # 50 in flight: wait for answers, not for records
                    self._drain(timeout=self.poll_timeout_s)
                else:
                    self._take(self._consumer.consume(batch, timeout=self.poll_timeout_s))
                self._resume_assigned()
                self._drain()
                self._dispatch(pool)
                self._flow_control()
                if time.monotonic() - last_commit >= self.commit_interval_s:
                    self._commit()
                    last_commit = time.monotonic()
        except Exception:
            log.exception("source loop failed", extra={"fields": {"source": spec.name}})
        finally:
            self._shutdown(pool)

    def _shutdown(self, pool: ThreadPoolExecutor) -> None:
        deadline = time.monotonic() + getattr(self, "_grace_s", 5.0)
        while sum(self._in_flight.values()) and time.monotonic() < deadline:
            self._drain(timeout=0.05)
        self._drain()
        pool.shutdown(wait=False, cancel_futures=True)
        try:
            self._commit()
            self._consumer.close()
        except Exception as e:  # the broker may be gone already
            log.warning(
                "closing the consumer failed",
                extra={"fields": {"source": self.spec.name, "error": str(e)}},
            )

    def _take(self, messages: list[Any]) -> None:
        for msg in messages:
            err = msg.error()
            if err is not None:
                self._log_consumer_error(err)
                continue
            tp = (msg.topic(), msg.partition())
            if tp not in self.assigned:
                continue
            self._queues.setdefault(tp, deque()).append(Record.from_message(msg))
            self.tracker.received(tp[0], tp[1], msg.offset())

    def _log_consumer_error(self, err: Any) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        text = err.str()
        if err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
            if text in self._unknown_topics_logged:
                return
            self._unknown_topics_logged.add(text)
        log.warning("consumer error", extra={"fields": {"source": self.spec.name, "error": text}})

    def _drain(self, timeout: float | None = None) -> None:
        while True:
            try:
                tp, offset, outcome = (
                    self._done.get(timeout=timeout) if timeout else self._done.get_nowait()
                )
            except queue.Empty:
                return
            timeout = None
            self._in_flight[tp] = self._in_flight.get(tp, 1) - 1
            self.outcomes[outcome.value] += 1
            if outcome.finished:
                self.tracker.finished(tp[0], tp[1], offset)

    def _dispatch(self, pool: ThreadPoolExecutor) -> None:
        """Ordered: the next record of every partition with nothing in flight. Unordered: every
        record polled (polling itself pauses at 50 in flight)."""
        for tp, pending in self._queues.items():
            while pending and not (self.spec.ordered and self._in_flight.get(tp, 0) >= 1):
                record = pending.popleft()
                self._in_flight[tp] = self._in_flight.get(tp, 0) + 1
                pool.submit(self._deliver, tp, record)

    def _deliver(self, tp: TP, record: Record) -> None:
        where = {
            "source": self.spec.name,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
        }
        try:
            event = record_to_event(record, self.spec)
            outcome = self.deliverer.deliver(event, self.spec, where)
        except Exception:
            log.exception(
                "delivery failed unexpectedly; the record is dropped", extra={"fields": where}
            )
            outcome = Outcome.DROPPED
        self._done.put((tp, record.offset, outcome))

    def _holding(self) -> bool:
        """Unordered: polling waits while 50 or more are in flight. The loop stops calling
        consume instead of pausing the partitions: librdkafka drops a paused partition's fetched
        records and fetches them again on resume, which cost up to half a second per batch."""
        return not self.spec.ordered and sum(self._in_flight.values()) >= UNORDERED_IN_FLIGHT

    def _flow_control(self) -> None:
        """Ordered: a partition whose local queue is long is paused until it is short again."""
        if not self.spec.ordered:
            return
        for tp, pending in self._queues.items():
            if tp in self._paused and len(pending) < RESUME_BELOW:
                self._consumer.resume([TopicPartition(*tp)])
                self._paused.discard(tp)
            elif tp not in self._paused and len(pending) > PAUSE_ABOVE:
                self._consumer.pause([TopicPartition(*tp)])
                self._paused.add(tp)

    def _commit(self, only: set[TP] | None = None) -> None:
        positions = self.tracker.to_commit(only)
        if not positions:
            return
        try:
            self._consumer.commit(
                offsets=[TopicPartition(t, p, pos) for (t, p), pos in positions.items()],
                asynchronous=False,
            )
        except Exception as e:
            log.warning(
                "commit failed", extra={"fields": {"source": self.spec.name, "error": str(e)}}
            )
            return
        self.tracker.committed(positions)
        log.debug(
            "committed",
            extra={
                "fields": {
                    "source": self.spec.name,
                    "offsets": {f"{t}/{p}": pos for (t, p), pos in positions.items()},
                }
            },
        )

    # -- rebalance ----------------------------------------------------------------------------
    def _resume_assigned(self) -> None:
        """Resume what a rebalance assigned. librdkafka keeps a partition's pause across a
        revoke and re-assignment; flow control forgets it at assignment, so a partition paused
        at 50 in flight when the group rebalanced (a broker restart does that) would otherwise
        stay paused for good and the source would stop delivering."""
        if not self._resume_owed:
            return
        owed, self._resume_owed = self._resume_owed, []
        try:
            self._consumer.resume(owed)
        except KafkaException as e:
            log.warning(
                "resume failed", extra={"fields": {"source": self.spec.name, "error": str(e)}}
            )
            self._resume_owed = owed  # the next turn of the loop tries again

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.assigned.add((tp.topic, tp.partition))
            self.tracker.assign(tp.topic, tp.partition)
        self._paused.clear()
        # Resumed once assigned (after this callback returns), whatever their state before.
        self._resume_owed = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        log.info(
            "partitions assigned",
            extra={
                "fields": {
                    "source": self.spec.name,
                    "partitions": [f"{t.topic}/{t.partition}" for t in partitions],
                }
            },
        )

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._drain()
        self._commit(gone)
        for tp in gone:
            self.assigned.discard(tp)
            self._queues.pop(tp, None)
            self._paused.discard(tp)
            self.tracker.revoke(*tp)
        log.info(
            "partitions revoked",
            extra={
                "fields": {
                    "source": self.spec.name,
                    "partitions": sorted(f"{t}/{p}" for t, p in gone),
                }
            },
        )
