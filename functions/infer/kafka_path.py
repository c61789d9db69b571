"""The Kafka path: one input record (as KafkaSource delivers it) -> one prediction record.

The output is keyed by the input's exact key bytes (Base64 in the ``key`` extension: the
inference KafkaSource is labelled ``key-type: byte-array``), or by
``<topic>:<partition>:<offset>`` when it has none; it carries the input's headers plus the
input's coordinates. The answer is 2xx only once Kafka has acknowledged the output.

A record the function cannot predict for good (it does not decode, does not fit the model, or
its prediction is larger than Kafka takes) goes to the dead-letter topic (original bytes, the
reason, the coordinates) and, once Kafka has acknowledged that dead letter, the answer is 2xx
with ``{"dead_lettered": true, "reason": ...}``: the record was handled, so the KafkaSource
neither retries it nor sends a second copy to its own dead-letter sink, which is left for what
the function could not answer (timeouts, crashes). When the dead letter itself cannot be
written the answer is 5xx and the record is delivered again.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

from functions.infer.batcher import split_rows
from functions.infer.serving import InferenceService
from kafkaml.errors import InvalidEvent, KmlError, PayloadTooLarge
from kafkaml.events import KAFKA_EVENT, Event, record_key

HEADER_PREFIX = "kafkaheader"
_ID_RE = re.compile(r"^partition:(\d+)/offset:(\d+)$")


class Delivered(Protocol):
    topic: str
    partition: int
    offset: int


class Producer(Protocol):
    def send(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> Delivered: ...


@dataclass(frozen=True)
class InputRecord:
    """The Kafka record behind a ``dev.knative.kafka.event``."""

    value: bytes
    topic: str
    partition: int | None
    offset: int | None
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    event_id: str

    @property
    def coordinates(self) -> str:
        return f"{self.topic}:{_str(self.partition)}:{_str(self.offset)}"

    @property
    def output_key(self) -> bytes:
        """The input's key bytes as produced, or its coordinates when it has none."""
        return self.key if self.key else self.coordinates.encode()

    def coordinate_headers(self) -> list[tuple[str, bytes]]:
        return [
            ("kml-input-topic", self.topic.encode()),
            ("kml-input-partition", _str(self.partition).encode()),
            ("kml-input-offset", _str(self.offset).encode()),
        ]


def input_record(event: Event, default_topic: str = "") -> InputRecord:
    """The record's value, coordinates, key and headers, read from KafkaSource's attributes."""
    if event.type != KAFKA_EVENT:
        raise InvalidEvent(f"expected a {KAFKA_EVENT} event, got {event.type!r}")
    ext = event.extensions
    source = str(event.source or "")
    topic = source.rsplit("#", 1)[1] if "#" in source else default_topic
    partition, offset = _int(ext.get("knativekafkapartition")), _int(ext.get("knativekafkaoffset"))
    match = _ID_RE.match(event.id or "")
    if match:
        partition = partition if partition is not None else int(match.group(1))
        offset = offset if offset is not None else int(match.group(2))
    key = record_key(event)
    headers = tuple(
        sorted(
            (name[len(HEADER_PREFIX) :], _bytes(value))
            for name, value in ext.items()
            if name.startswith(HEADER_PREFIX) and len(name) > len(HEADER_PREFIX)
        )
    )
    return InputRecord(
        event.body_bytes(),
        topic,
        partition,
        offset,
        key,
        headers,
        event.id,
    )


def handle_kafka_event(service: InferenceService, event: Event) -> dict[str, Any]:
    """Predict one record and produce the result; returns where the prediction landed, or
    where its dead letter did (``dead_lettered``) when the record cannot be predicted."""
    record = input_record(event, service.spec.get("input_topic", ""))
    try:
        x = service.conform(service.codec.decode_features([record.value]))
    except KmlError as e:
        if e.retryable:
            raise
        return dead_lettered(service, record, e)
    (row,) = split_rows(service.predict(x))
    value = json.dumps({"values": row}, separators=(",", ":")).encode()
    headers = [*record.headers, *record.coordinate_headers()]
    spec = service.spec
    try:
        done = service.producer().send(spec["output_topic"], value, record.output_key, headers)
    except PayloadTooLarge as e:  # as stream mode does: the prediction can never be written
        return dead_lettered(service, record, e)
    return {
        "key": record.output_key.decode("utf-8", errors="backslashreplace"),
        "topic": done.topic,
        "partition": done.partition,
        "offset": done.offset,
    }


def dead_lettered(
    service: InferenceService, record: InputRecord, error: KmlError
) -> dict[str, Any]:
    """Dead-letter ``record`` and describe it: the 2xx answer of a record handled that way."""
    done = dead_letter(service, record, error)
    return {
        "dead_lettered": True,
        "reason": reason_of(error),
        "kind": error.kind,
        "status": error.status,
        "key": record.output_key.decode("utf-8", errors="backslashreplace"),
        "topic": getattr(done, "topic", service.settings.dlq_topic),
        "partition": getattr(done, "partition", None),
        "offset": getattr(done, "offset", None),
    }


def reason_of(error: KmlError) -> str:
    """What a dead letter says went wrong: the error's reason and every problem it lists."""
    reason = getattr(error, "reason", None) or error.message
    if getattr(error, "problems", None):
        reason = f"{reason}: {'; '.join(error.problems)}"
    return reason


def dead_letter(service: InferenceService, record: InputRecord, error: KmlError) -> Any:
    """Park the original bytes on the dead-letter topic with the reason; returns what the
    producer's ``send`` returned once Kafka acknowledged it (5xx if Kafka fails)."""
    headers = [
        *record.headers,
        ("kml-error", reason_of(error).encode()[:2000]),
        ("kml-error-kind", error.kind.encode()),
        ("kml-error-status", str(error.status).encode()),
        ("kml-inference-id", service.settings.inference_id.encode()),
        *record.coordinate_headers(),
    ]
    dlq = service.settings.dlq_topic
    return service.producer().send(dlq, record.value, record.output_key, headers)


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _str(value: int | None) -> str:
    return "" if value is None else str(value)


def _bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return str(value).encode()
