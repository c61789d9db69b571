"""A thread-safe producer whose ``send`` returns only once Kafka confirmed that one record.

``kafkaml.kafka.ConfirmingProducer`` confirms by flushing everything outstanding, which suits a
batch writer; here many request threads share one producer, each waiting for its own record
only, so every record gets its own future and a background thread serves delivery reports.

The event loop of the lean server (``functions.infer.worker``) does not wait on a thread per
record: ``send_async`` hands back an asyncio future. The poll thread blocks in librdkafka's poll
(the GIL released) and, each time it returns, hands everything acknowledged meanwhile to the
loop in one ``call_soon_threadsafe``: one wake-up per batch of reports, none while nothing is
outstanding. (The loop used to poll the producer itself every millisecond while anything was
outstanding: those timers cost more CPU than the hand-over, and a report waited for the next
tick.)
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from kafkaml.errors import PayloadTooLarge, Unavailable
from kafkaml.kafka import client_config
from kafkaml.settings import Settings

log = logging.getLogger("kml.infer")

POLL_S = 0.05
"""The poll thread's longest wait in librdkafka (a report ends it at once)."""


@dataclass(frozen=True)
class Delivery:
    topic: str
    partition: int
    offset: int


class DeliveringProducer:
    """``send`` blocks until the record is acknowledged (``acks=all``, idempotent)."""

    def __init__(
        self, bootstrap: str, timeout_s: float = 30.0, config: dict[str, Any] | None = None
    ) -> None:
        self.bootstrap, self.timeout_s = bootstrap, timeout_s
        self._producer = Producer(
            {
                **client_config(bootstrap),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 2,  # concurrent requests share produce requests; lone ones wait little
                "message.timeout.ms": int(timeout_s * 1000),
                **(config or {}),
            }
        )
        self._closed = threading.Event()
        self._acks: list[tuple[asyncio.AbstractEventLoop, asyncio.Future, Any]] = []
        self._poller = threading.Thread(target=self._poll, name="kml-producer-poll", daemon=True)
        self._poller.start()

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveringProducer:
        return cls(settings.kafka, settings.infer_produce_timeout_s)

    def send(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> Delivery:
        """Produce one record and wait for its delivery report; failures are 5xx (or 413)."""
        future: Future[Delivery] = Future()

        def on_delivery(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                future.set_exception(_delivery_error(self.bootstrap, topic, err))
            else:
                future.set_result(Delivery(msg.topic(), msg.partition(), msg.offset()))

        self._produce(topic, value, key, headers, on_delivery)
        try:
            return future.result(timeout=self.timeout_s + 1)
        except FutureTimeout:
            raise Unavailable(
                f"Kafka at {self.bootstrap} did not confirm a record on {topic} "
                f"within {self.timeout_s:g}s"
            ) from None

    def _produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]],
        on_delivery: Any,
    ) -> None:
        """Hand one record to librdkafka; a full local queue or a refused record is an error."""
        try:
            self._producer.produce(
                topic, value=value, key=key, headers=headers, on_delivery=on_delivery
            )
        except BufferError:
            raise Unavailable(
                f"Kafka at {self.bootstrap} is not taking records (local queue full)"
            ) from None
        except KafkaException as e:
            raise _delivery_error(self.bootstrap, topic, e.args[0]) from None

    def send_async(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future:
        """``send`` for a coroutine on the running loop: a future of the :class:`Delivery`
        (or of the 5xx/413 error), resolved once Kafka acknowledged the record."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def on_delivery(err: KafkaError | None, msg: Any) -> None:
            outcome = (
                _delivery_error(self.bootstrap, topic, err)
                if err is not None
                else Delivery(msg.topic(), msg.partition(), msg.offset())
            )
            self._acks.append((loop, future, outcome))  # in the poll thread

        self._produce(topic, value, key, headers, on_delivery)
        return future

    def _poll(self) -> None:
        while not self._closed.is_set():
            try:
                self._producer.poll(POLL_S)
            except Exception:  # a callback raised: the reports after it must still be served
                log.exception("a delivery report failed")
            self._hand_over()

    def _hand_over(self) -> None:
        """Resolve the asyncio futures acknowledged so far: one wake-up of each loop waiting."""
        if not self._acks:
            return
        acks, self._acks = self._acks, []
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for loop, future, outcome in acks:
            by_loop.setdefault(loop, []).append((future, outcome))
        for loop, done in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, done)
            except RuntimeError:  # the loop closed (the worker is exiting): nobody waits
                pass

    def close(self) -> None:
        """Stop the poll thread, then deliver what is outstanding (reports served here)."""
        self._closed.set()
        self._poller.join(timeout=2)
        self._producer.flush(self.timeout_s)
        self._hand_over()


def _resolve(done: list[tuple[asyncio.Future, Any]]) -> None:
    for future, outcome in done:
        if future.done():
            continue
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _delivery_error(bootstrap: str, topic: str, err: Any) -> Unavailable | PayloadTooLarge:
    reason = err.str() if isinstance(err, KafkaError) else type(err).__name__
    if isinstance(err, KafkaError) and err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
        return PayloadTooLarge(f"Kafka refused a record for {topic}: {reason}")
    return Unavailable(f"Kafka at {bootstrap} did not take a record for {topic}: {reason}")
