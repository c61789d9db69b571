"""Stream mode: one member of the deployment's consumer group, predicting records in batches.

``python -m functions.infer.stream`` serves the inference deployment ``KML_INFERENCE_ID``: it
polls up to ``infer_stream_batch`` records, decodes them in one codec call, calls the model once
and produces one output per input, with the value, key and headers the event path gives the
same record. A record that does not decode is dead-lettered as the event path does it; the rest
of its batch goes on. A poll takes what has arrived (it never waits for a full batch), and a
batch is predicted while the previous one's acknowledgements arrive: one batch is in flight at
a time. Offsets are committed only once every record of a batch is acknowledged (``acks=all``),
so a crash, a restart or a rebalance may repeat records and never loses one.
``/metrics`` and ``/health/{liveness,readiness}`` answer on a side thread.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from functions.infer.kafka_path import InputRecord, dead_letter
from functions.infer.metrics import InferMetrics
from functions.infer.model import MODEL_VERSION_HEADER
from functions.infer.serving import InferenceService, Loader, load_from_storage
from functions.infer.stream_batch import (
    Decoded,
    decode_batch,
    event_headers,
    output_key,
    predict_groups,
)
from functions.infer.stream_probes import StreamMetrics, serve_probes
from kafkaml.errors import KmlError, PayloadTooLarge, Unavailable
from kafkaml.kafka import client_config
from kafkaml.manifests import service_name
from kafkaml.settings import Settings

log = logging.getLogger("kml.infer.stream")
MAX_BACKOFF_S = 30.0
FETCH_BYTES = 8 * 1024 * 1024
COMMIT_EVERY_S = 0.1
"""Acknowledged offsets are committed at most this often, and at once when the loop is idle,
on revocation and on close: under light load batches are small, and each commit is a write
for the group coordinator. A crash repeats at most this long's records more."""


@dataclass(frozen=True)
class _Predicted:
    """A batch's outputs, named for the model version that made them."""

    output_topic: str
    version: str
    decoded: Decoded
    values: list[bytes]


@dataclass(frozen=True)
class _InFlight:
    """A produced batch whose acknowledgements are awaited."""

    msgs: list
    dead: list[KmlError]
    started: float
    """``time.perf_counter()`` at its poll's return."""


class _BatchSink:
    """What ``dead_letter`` needs of a service: the settings and a ``send`` that queues the
    record with the batch's outputs (confirmed together before the offsets are committed)."""

    def __init__(self, settings: Settings, produce: Callable[..., None]) -> None:
        self.settings, self._produce = settings, produce

    def producer(self) -> _BatchSink:
        return self

    def send(self, topic: str, value: bytes, key: bytes | None, headers: list) -> None:
        self._produce(topic, value, key, headers)


def consumer_config(settings: Settings) -> dict[str, Any]:
    """The consumer of one stream process: a member of the deployment's group (the group the
    KafkaSource of event mode uses, and the one KEDA watches), committing only by hand."""
    return {
        **client_config(settings.kafka),
        "group.id": service_name(settings.inference_id),
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",  # as the event path's KafkaSource
        "partition.assignment.strategy": "cooperative-sticky",
        # A replica that dies without leaving (OOM-killed, node lost) holds its partitions
        # until its session ends: keep that short, so a replacement resumes within seconds.
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 2_000,
        # A full poll is a few MB: with librdkafka's 1 MB per partition and fetch, a backlog
        # was drained at the pace of fetch round trips (8 MB: +15% records/s here).
        "max.partition.fetch.bytes": FETCH_BYTES,
    }


class StreamWorker:
    """Poll, predict, produce, confirm, commit; repeat until ``stop`` is set."""

    def __init__(
        self,
        settings: Settings,
        service: InferenceService,
        consumer_factory: Callable[[dict[str, Any]], Any] = Consumer,
        producer_factory: Callable[[dict[str, Any]], Any] = Producer,
    ) -> None:
        self.settings, self.service = settings, service
        self._consumer_factory, self._producer_factory = consumer_factory, producer_factory
        self.metrics = StreamMetrics(service.metrics)
        self._consumer: Any = None
        self._producer: Any = None
        self._failed: list[KafkaError] = []
        self._topic = ""
        self._assigned: set[int] = set()
        self._done: dict[int, int] = {}
        """Next offset to read per partition, for records whose outputs are acknowledged."""
        self._in_flight: _InFlight | None = None
        self._uncommitted = False
        self._committed_at = 0.0
        self._rebalanced = False
        self._backoff = 0.0
        self.heartbeat = time.monotonic()
        self._streaming = False

    # -- set-up -------------------------------------------------------------------------------
    def connect(self) -> None:
        """Join the consumer group on the spec's input topic (the model is loaded by now)."""
        spec, s = self.service.spec, self.settings
        self._producer = self._producer_factory(
            {
                **client_config(s.kafka),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "batch.num.messages": 10_000,
                "queue.buffering.max.messages": max(100_000, 4 * s.infer_stream_batch),
                "message.timeout.ms": int(s.infer_produce_timeout_s * 1000),
                "delivery.report.only.error": True,  # a report per failure, none per success
                "on_delivery": lambda err, msg: self._failed.append(err),
            }
        )
        self._consumer = self._consumer_factory(consumer_config(s))
        self._topic = spec["input_topic"]
        self._consumer.subscribe(
            [self._topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._streaming = True
        log.info(
            "stream consumer started",
            extra={"fields": self._fields(topic=self._topic, group=service_name(s.inference_id))},
        )

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._rebalanced = True
        self._assigned |= {p.partition for p in partitions}
        self.metrics.assigned.set(len(self._assigned))
        log.info(
            "partitions assigned", extra={"fields": self._fields(partitions=_names(partitions))}
        )

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Revocations arrive inside ``consume``: the batch in flight is confirmed first, then
        what was delivered is committed (synchronously), so the partitions are handed over
        without loss. If Kafka did not take the batch, nothing of it is committed: the next
        owners repeat it, and the partitions kept are rewound by the step."""
        try:
            self._settle()
        except Unavailable as e:
            log.warning(
                "batch in flight not acknowledged", extra={"fields": self._fields(reason=e.message)}
            )
        gone = {p.partition for p in partitions}
        offsets = [TopicPartition(self._topic, p, o) for p, o in self._done.items() if p in gone]
        if offsets:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as e:  # the next owner repeats those records: no loss
                log.warning(
                    "commit on revoke failed", extra={"fields": self._fields(reason=str(e))}
                )
        self._forget(gone)
        log.info(
            "partitions revoked", extra={"fields": self._fields(partitions=_names(partitions))}
        )

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._forget({p.partition for p in partitions})
        log.warning(
            "partitions lost", extra={"fields": self._fields(partitions=_names(partitions))}
        )

    def _forget(self, gone: set[int]) -> None:
        self._rebalanced = True
        self._assigned -= gone
        self.metrics.assigned.set(len(self._assigned))
        for partition in gone:
            self._done.pop(partition, None)

    def check_ready(self) -> None:
        """Ready once the model is loaded and the consumer has joined its group's topic."""
        self.service.ready()
        if not self._streaming:
            raise Unavailable("the consumer is not started", inference=self.settings.inference_id)

    # -- the loop -----------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.step(stop)
        self.close()

    def step(self, stop: threading.Event | None = None) -> int:
        """One poll and its batch: predict it while the previous batch's acknowledgements
        arrive, wait for those, then produce this one (it is confirmed by the next step).
        Returns how many records this step found acknowledged."""
        self.heartbeat = time.monotonic()
        msgs = self._poll_records()
        try:
            if not msgs:
                done = self._settle()  # idle: confirm what is in flight, and commit it at once,
                self._commit(now=True)  # so the group's lag (what KEDA scales on) reaches 0
                return done
            started = time.perf_counter()
            predicted = self._predict(msgs)
            done = self._settle()
            self._in_flight = self._send(msgs, predicted, started)
        except KmlError as e:
            if not e.retryable:
                raise
            self._retry_later(msgs, e, stop)
            return 0
        self._commit()
        self._backoff = 0.0
        return done

    def _poll_records(self) -> list:
        """A poll's records, without errors and without those of partitions revoked in it
        (they are the next owner's)."""
        self._rebalanced = False
        polled = self._poll()
        msgs = [m for m in polled if m.error() is None]
        if len(msgs) < len(polled):
            self._consumer_errors(polled)
        if self._rebalanced:
            msgs = [m for m in msgs if m.partition() in self._assigned]
        return msgs

    def _poll(self) -> list:
        """The records the consumer holds now, up to a batch; when it holds none, the first
        to arrive within ``infer_stream_wait_ms`` and whatever came with it. A batch never
        waits to fill: under load records pile up while one batch is being delivered, and
        the next poll takes them all."""
        s, consume = self.settings, self._consumer.consume
        polled = consume(s.infer_stream_batch, 0)
        if not polled:
            polled = consume(1, s.infer_stream_wait_ms / 1000)
            if polled and s.infer_stream_batch > 1:
                polled += consume(s.infer_stream_batch - 1, 0)
        return polled

    def _consumer_errors(self, polled: list) -> None:
        for m in polled:
            err = m.error()
            if err is None or err.code() == KafkaError._PARTITION_EOF:
                continue
            if err.fatal():
                raise KafkaException(err)
            log.warning("consumer error", extra={"fields": self._fields(reason=str(err))})

    def _predict(self, msgs: list) -> _Predicted:
        """Decode the batch in one call and predict it in one model call."""
        loaded = self.service.loaded  # one version for the whole batch, named on every output
        # A record without a value reaches the event path as an empty body: decode it as one.
        decoded = decode_batch(self.service.codec, loaded.model, [m.value() or b"" for m in msgs])
        values = predict_groups(loaded.model, decoded)
        self.service.metrics.observe_batch(len(values))
        return _Predicted(loaded.spec["output_topic"], loaded.version, decoded, values)

    def _send(self, msgs: list, predicted: _Predicted, started: float) -> _InFlight:
        """Produce the batch's outputs and dead letters without waiting for them."""
        out_topic, topic = predicted.output_topic, self._topic
        produce = self._producer.produce
        version = (MODEL_VERSION_HEADER, predicted.version.encode())
        topic_header = ("kml-input-topic", topic.encode())
        partition_headers: dict[int, tuple[str, bytes]] = {}
        dead = [(msgs[i], e) for i, e in predicted.decoded.bad]
        for i, value in zip(predicted.decoded.ok, predicted.values, strict=True):
            m = msgs[i]
            partition, offset = m.partition(), m.offset()
            where = partition_headers.get(partition)
            if where is None:
                where = partition_headers[partition] = ("kml-input-partition", b"%d" % partition)
            headers = [topic_header, where, ("kml-input-offset", b"%d" % offset), version]
            raw = m.headers()
            if raw:
                headers[:0] = event_headers(raw)
            key = output_key(m.key(), topic, partition, offset)
            try:
                produce(out_topic, value, key, headers=headers)
            except (BufferError, KafkaException):
                try:
                    self._produce(out_topic, value, key, headers)
                except PayloadTooLarge as e:
                    dead.append((m, e))
        sink = _BatchSink(self.settings, self._produce)
        for m, error in dead:
            dead_letter(sink, _input_record(m), error)  # type: ignore[arg-type]
        return _InFlight(msgs, [e for _, e in dead], started)

    def _settle(self) -> int:
        """Wait until every record of the batch in flight is acknowledged; its offsets are then
        ready to commit. Returns its size; raises a retryable error (the batch stays in
        flight, for ``_retry_later`` to rewind) when Kafka did not take all of it."""
        batch = self._in_flight
        if batch is None:
            return 0
        remaining = self._producer.flush(self.settings.infer_produce_timeout_s + 1)
        if self._failed or remaining:
            reason = str(self._failed[0]) if self._failed else f"{remaining} not acknowledged"
            raise Unavailable(
                f"Kafka at {self.settings.kafka_bootstrap} did not take the batch's records: "
                f"{reason}"
            )
        self._in_flight = None
        self._done_with(batch.msgs)
        self.metrics.batch(len(batch.msgs), len(batch.dead), time.perf_counter() - batch.started)
        if batch.dead:
            log.warning(
                "records dead-lettered",
                extra={"fields": self._fields(count=len(batch.dead), first=batch.dead[0].message)},
            )
        return len(batch.msgs)

    def _produce(self, topic: str, value: bytes, key: bytes | None, headers: list) -> None:
        """Produce one record, waiting while the local queue is full; 413 when Kafka refuses
        its size, 503 for anything else."""
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers)
                return
            except BufferError:
                self._producer.poll(0.05)  # the local queue is full: let deliveries drain it
            except KafkaException as e:
                err = e.args[0]
                if err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    raise PayloadTooLarge(
                        f"Kafka refused a record for {topic}: {err.str()}"
                    ) from None
                raise Unavailable(f"Kafka did not take a record for {topic}: {err.str()}") from None

    def _done_with(self, msgs: list) -> None:
        """Every record of the batch is acknowledged: its offsets are ready to commit."""
        ends = {m.partition(): m.offset() + 1 for m in msgs}  # offsets rise in a partition
        self._done.update((p, o) for p, o in ends.items() if p in self._assigned)
        self._uncommitted = True

    def _commit(self, now: bool = False) -> None:
        """Commit the acknowledged offsets, at most every ``COMMIT_EVERY_S`` unless ``now``."""
        if not self._uncommitted:
            return
        at = time.monotonic()
        if not now and at - self._committed_at < COMMIT_EVERY_S:
            return
        self._uncommitted, self._committed_at = False, at
        offsets = [
            TopicPartition(self._topic, p, o) for p, o in self._done.items() if p in self._assigned
        ]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as e:  # redelivered after a rebalance: repeated, not lost
            log.warning("commit failed", extra={"fields": self._fields(reason=str(e))})

    def _retry_later(self, msgs: list, error: KmlError, stop: threading.Event | None) -> None:
        """Rewind every partition of the batch to its first record and wait before polling it
        again: the batch is predicted anew (its acknowledged outputs may repeat)."""
        if self._in_flight is not None:  # not acknowledged: redone with the batch after it
            msgs = [*self._in_flight.msgs, *msgs]
            self._in_flight = None
        self._failed.clear()
        firsts: dict[int, int] = {}
        for m in reversed(msgs):  # offsets rise within a partition: the first one wins
            firsts[m.partition()] = m.offset()
        for partition, offset in firsts.items():
            try:
                self._consumer.seek(TopicPartition(self._topic, partition, offset))
            except KafkaException as e:  # revoked meanwhile: its next owner starts at the commit
                log.warning("seek failed", extra={"fields": self._fields(reason=str(e))})
        self._backoff = min(MAX_BACKOFF_S, max(0.5, self._backoff * 2))
        self.metrics.retried(len(msgs), error.kind)
        log.error(
            "batch not delivered; retrying",
            extra={
                "fields": self._fields(
                    records=len(msgs), reason=error.message, retry_in_s=self._backoff
                )
            },
        )
        deadline = time.monotonic() + self._backoff
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            self.heartbeat = time.monotonic()
            time.sleep(0.1)

    def close(self) -> None:
        """Leave the group (its revocation confirms the batch in flight and commits what was
        delivered) and flush."""
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._producer is not None:
            self._producer.flush(self.settings.infer_produce_timeout_s)
        log.info("stream consumer stopped", extra={"fields": self._fields()})

    def _fields(self, **more: Any) -> dict[str, Any]:
        return {"inference": self.settings.inference_id, **more}


def _input_record(m: Any) -> InputRecord:
    topic, partition, offset = m.topic(), m.partition(), m.offset()
    return InputRecord(
        m.value() or b"",
        topic,
        partition,
        offset,
        m.key(),
        event_headers(m.headers()),
        f"partition:{partition}/offset:{offset}",
    )


def _names(partitions: list[TopicPartition]) -> list[str]:
    return [f"{p.topic}:{p.partition}" for p in partitions]


def run(settings: Settings, host: str, loader: Loader = load_from_storage) -> None:
    """Load the model, serve the probes, and stream until SIGTERM or SIGINT."""
    if not settings.inference_id:
        raise SystemExit("KML_INFERENCE_ID is not set: a stream process serves one deployment")
    service = InferenceService(settings, InferMetrics(settings.inference_id), loader=loader)
    worker = StreamWorker(settings, service)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = serve_probes(host, settings.infer_stream_port, worker)
    try:
        service.start()
        while not service.wait_ready(0.5):
            worker.heartbeat = time.monotonic()
            if stop.is_set():
                return
        worker.connect()
        worker.run(stop)
    finally:
        server.shutdown()


def main(argv: list[str] | None = None) -> None:
    from kafkaml.web import configure_logging

    parser = argparse.ArgumentParser(prog="python -m functions.infer.stream", description=__doc__)
    parser.add_argument("--host", default="0.0.0.0", help="Address of /metrics and the probes.")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    run(settings, args.host)


if __name__ == "__main__":
    main()
