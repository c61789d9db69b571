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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from functions.infer.batcher import Outputs, split_rows
from functions.infer.model import version_header
from functions.infer.serving import InferenceService
from kafkaml.errors import InvalidEvent, KmlError, PayloadTooLarge
from kafkaml.events import KAFKA_EVENT, Event, record_key

HEADER_PREFIX = "kafkaheader"
_ID_RE = re.compile(r"^partition:(\d+)/offset:(\d+)$")
_COMPACT = json.JSONEncoder(separators=(",", ":")).encode
"""``json.dumps(..., separators=(",", ":"))`` without building an encoder per record."""


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


def binary_record(headers: Mapping[str, str], body: bytes, default_topic: str) -> InputRecord:
    """The record behind a binary-mode ``dev.knative.kafka.event``, read in one pass straight
    from its ``ce-*`` headers (names lowercased): what :func:`input_record` reads from
    ``kafkaml.events.parse_http``'s event, without the SDK's per-request work. Values are taken
    as sent, as there (Knative's dispatcher does not percent-encode them)."""
    attrs: dict[str, str] = {}
    kafka_headers = []
    skip = 3 + len(HEADER_PREFIX)
    for name, value in headers.items():
        if name[:3] == "ce-":
            attrs[name[3:]] = value
            if name[3:skip] == HEADER_PREFIX and len(name) > skip:
                kafka_headers.append((name[skip:], value.encode()))
    if attrs.get("type") != KAFKA_EVENT:
        raise InvalidEvent(f"expected a {KAFKA_EVENT} event, got {attrs.get('type')!r}")
    if attrs.get("specversion") != "1.0":
        raise InvalidEvent(
            f"invalid CloudEvent: specversion {attrs.get('specversion')!r} is not '1.0'"
        )
    missing = [name for name in ("id", "source") if not attrs.get(name)]
    if missing:
        raise InvalidEvent(f"invalid CloudEvent: missing attribute(s) {', '.join(missing)}")
    source, event_id = attrs["source"], attrs["id"]
    topic = source.rsplit("#", 1)[1] if "#" in source else default_topic
    partition = _int(attrs.get("knativekafkapartition"))
    offset = _int(attrs.get("knativekafkaoffset"))
    if partition is None or offset is None:
        match = _ID_RE.match(event_id)
        if match:
            partition = partition if partition is not None else int(match.group(1))
            offset = offset if offset is not None else int(match.group(2))
    key = record_key(Event(KAFKA_EVENT, source, event_id, attributes=attrs))
    kafka_headers.sort()
    return InputRecord(body, topic, partition, offset, key, tuple(kafka_headers), event_id)


def decoded(service: InferenceService, record: InputRecord) -> np.ndarray | KmlError:
    """The record's rows as the model takes them, or the (non-retried) error that sends the
    record to the dead-letter topic; a retried error is raised (5xx)."""
    try:
        return service.conform(service.codec.decode_features([record.value]))
    except KmlError as e:
        if e.retryable:
            raise
        return e


def prediction_record(
    service: InferenceService, record: InputRecord, outputs: Outputs
) -> tuple[str, bytes, bytes, list[tuple[str, bytes]]]:
    """What to produce for ``record``: topic, value, key and headers."""
    (row,) = split_rows(outputs)
    value = _COMPACT({"values": row}).encode()
    headers = [*record.headers, *record.coordinate_headers(), *version_header(outputs)]
    return service.spec["output_topic"], value, record.output_key, headers


def landed(record: InputRecord, done: Delivered) -> dict[str, Any]:
    """The 2xx answer: where the prediction landed."""
    return {
        "key": record.output_key.decode("utf-8", errors="backslashreplace"),
        "topic": done.topic,
        "partition": done.partition,
        "offset": done.offset,
    }


def handle_kafka_event(service: InferenceService, event: Event) -> dict[str, Any]:
    """Predict one record and produce the result; returns where the prediction landed, or
    where its dead letter did (``dead_lettered``) when the record cannot be predicted."""
    record = input_record(event, service.spec.get("input_topic", ""))
    x = decoded(service, record)
    if isinstance(x, KmlError):
        return dead_lettered(service, record, x)
    out = prediction_record(service, record, service.predict(x))
    try:
        done = service.producer().send(*out)
    except PayloadTooLarge as e:  # as stream mode does: the prediction can never be written
        return dead_lettered(service, record, e)
    return landed(record, done)


async def handle_kafka_event_async(
    service: InferenceService,
    record: InputRecord,
    predict: Callable[[np.ndarray], Awaitable[Outputs]],
    send: Callable[[str, bytes, bytes | None, list[tuple[str, bytes]]], Awaitable[Delivered]],
) -> dict[str, Any]:
    """:func:`handle_kafka_event` on an event loop: the prediction is batched with the other
    requests in flight (``predict``) and the acknowledgement awaited, not waited for by a
    thread (``send``); the same answers, records and dead letters."""
    x = decoded(service, record)
    if isinstance(x, KmlError):
        return dead_lettered_answer(
            service, record, x, await send(*dead_letter_record(service, record, x))
        )
    out = prediction_record(service, record, await predict(x))
    try:
        done = await send(*out)
    except PayloadTooLarge as e:
        return dead_lettered_answer(
            service, record, e, await send(*dead_letter_record(service, record, e))
        )
    return landed(record, done)


def dead_lettered(
    service: InferenceService, record: InputRecord, error: KmlError
) -> dict[str, Any]:
    """Dead-letter ``record`` and describe it: the 2xx answer of a record handled that way."""
    return dead_lettered_answer(service, record, error, dead_letter(service, record, error))


def dead_lettered_answer(
    service: InferenceService, record: InputRecord, error: KmlError, done: Any
) -> dict[str, Any]:
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
    return service.producer().send(*dead_letter_record(service, record, error))


def dead_letter_record(
    service: InferenceService, record: InputRecord, error: KmlError
) -> tuple[str, bytes, bytes, list[tuple[str, bytes]]]:
    """The dead letter of ``record``: topic, original bytes, key, headers with the reason."""
    headers = [
        *record.headers,
        ("kml-error", reason_of(error).encode()[:2000]),
        ("kml-error-kind", error.kind.encode()),
        ("kml-error-status", str(error.status).encode()),
        ("kml-inference-id", service.settings.inference_id.encode()),
        *record.coordinate_headers(),
    ]
    return service.settings.dlq_topic, record.value, record.output_key, headers


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
