"""A thread-safe producer whose ``send`` returns only once Kafka confirmed that one record.

``kafkaml.kafka.ConfirmingProducer`` confirms by flushing everything outstanding, which suits a
batch writer; here many request threads share one producer, each waiting for its own record
only, so every record gets its own future and a background thread serves delivery reports.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from kafkaml.errors import PayloadTooLarge, Unavailable
from kafkaml.settings import Settings


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
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 2,  # concurrent requests share produce requests; lone ones wait little
                "message.timeout.ms": int(timeout_s * 1000),
                **(config or {}),
            }
        )
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kml-producer-poll", daemon=True)
        self._poller.start()

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveringProducer:
        return cls(settings.kafka_bootstrap, settings.infer_produce_timeout_s)

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
        try:
            return future.result(timeout=self.timeout_s + 1)
        except FutureTimeout:
            raise Unavailable(
                f"Kafka at {self.bootstrap} did not confirm a record on {topic} "
                f"within {self.timeout_s:g}s"
            ) from None

    def _poll(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.05)

    def close(self) -> None:
        self._producer.flush(self.timeout_s)
        self._closed.set()
        self._poller.join(timeout=2)


def _delivery_error(bootstrap: str, topic: str, err: Any) -> Unavailable | PayloadTooLarge:
    reason = err.str() if isinstance(err, KafkaError) else type(err).__name__
    if isinstance(err, KafkaError) and err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
        return PayloadTooLarge(f"Kafka refused a record for {topic}: {reason}")
    return Unavailable(f"Kafka at {bootstrap} did not take a record for {topic}: {reason}")
