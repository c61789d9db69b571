"""What KafkaSource makes of a Kafka record, and how the event travels (pure functions).

``record_to_event`` passes a record that is a valid CloudEvent through (its own attributes, the
``time`` re-rendered, structured data re-serialised as Jackson writes it) and wraps every other
record, including one that only looks like a CloudEvent, as a ``dev.knative.kafka.event``.
``to_http_binary`` writes an event in binary content mode exactly as the dispatcher's HTTP client
puts it on the wire (``rendering.header_value``); ``to_kafka_binary`` is the record a KafkaSink
writes from what it received.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from dataclasses import dataclass, replace
from typing import Any

from kml.dev.bridge.rendering import (
    as_received,
    header_value,
    jackson_json,
    java_float,
    java_instant,
    java_time,
)
from kml.dev.bridge.sources import SourceSpec

KAFKA_EVENT_TYPE = "dev.knative.kafka.event"
STRUCTURED = "application/cloudevents+json"
REQUIRED = ("specversion", "id", "source", "type")
SPECVERSIONS = ("1.0", "0.3")
_NOT_ALNUM = re.compile(r"[^a-z0-9]")


@dataclass(frozen=True)
class Record:
    """The parts of a Kafka record the bridge uses (built from a confluent_kafka Message)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None = None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int | None = None

    @classmethod
    def from_message(cls, msg: Any) -> Record:
        ts_type, ts = msg.timestamp()
        return cls(
            topic=msg.topic(),
            partition=msg.partition(),
            offset=msg.offset(),
            value=msg.value(),
            key=msg.key(),
            headers=tuple((k, v or b"") for k, v in (msg.headers() or [])),
            timestamp_ms=ts if ts_type != 0 and ts >= 0 else None,
        )

    def header(self, name: str) -> bytes | None:
        found = [v for k, v in self.headers if k.lower() == name]
        return found[-1] if found else None


@dataclass(frozen=True)
class OutgoingEvent:
    """A CloudEvent on its way to a sink: string attributes (with extensions) and raw data."""

    attributes: dict[str, str]
    data: bytes = b""
    passed_through: bool = False

    def with_extensions(self, extensions: dict[str, str]) -> OutgoingEvent:
        return replace(self, attributes={**self.attributes, **extensions})


class NotACloudEvent(ValueError):
    """A record that looks like a CloudEvent but is not a valid one (it is wrapped instead)."""


def header_extension_name(header: str) -> str:
    """``kafkaheader`` + the header name lower-cased without characters outside [a-z0-9]."""
    return "kafkaheader" + _NOT_ALNUM.sub("", header.lower())


def key_extension(key: bytes, key_type: str) -> str:
    """The ``key`` extension per the key-type label (Kafka's deserializers, big-endian)."""
    if key_type == "byte-array":
        return base64.b64encode(key).decode()
    if key_type == "int" and len(key) == 4:
        return str(struct.unpack(">i", key)[0])
    if key_type == "float" and len(key) in (4, 8):
        return java_float(struct.unpack(">f" if len(key) == 4 else ">d", key)[0], len(key) == 4)
    return key.decode("utf-8", errors="replace")  # Java's new String(bytes, UTF_8)


def looks_like_cloudevent(record: Record) -> bool:
    """A ``ce_specversion`` header (binary) or ``content-type: application/cloudevents+json``."""
    if record.header("ce_specversion") is not None:
        return True
    ctype = record.header("content-type")
    return ctype is not None and _media_type(ctype) == STRUCTURED


def record_to_event(record: Record, spec: SourceSpec) -> OutgoingEvent:
    """The event KafkaSource delivers for ``record`` (with partition, offset and overrides)."""
    event = None
    if looks_like_cloudevent(record):
        try:
            attributes, data = _from_kafka_cloudevent(record)
            event = OutgoingEvent(attributes, data, passed_through=True)
        except NotACloudEvent:
            event = None  # wrapped like any raw record: its ce_* headers become kafkaheaderce*
    if event is None:
        event = OutgoingEvent(_synthesized(record, spec), record.value or b"")
    return event.with_extensions(
        {
            "knativekafkapartition": str(record.partition),
            "knativekafkaoffset": str(record.offset),
            **spec.ce_overrides,
        }
    )


def _synthesized(record: Record, spec: SourceSpec) -> dict[str, str]:
    attrs = {
        "specversion": "1.0",
        "id": f"partition:{record.partition}/offset:{record.offset}",
        "source": spec.source_attribute(record.topic),
        "type": KAFKA_EVENT_TYPE,
        "subject": f"partition:{record.partition}#{record.offset}",
    }
    if record.timestamp_ms is not None:
        attrs["time"] = java_instant(record.timestamp_ms)
    ctype = record.header("content-type")
    if ctype is not None:
        attrs["datacontenttype"] = _text(ctype).lower()
    if record.key is not None:
        attrs["key"] = attrs["partitionkey"] = key_extension(record.key, spec.key_type)
    for name, value in record.headers:
        if name.lower() != "content-type":
            attrs[header_extension_name(name)] = _text(value)
    return attrs


def _from_kafka_cloudevent(record: Record) -> tuple[dict[str, str], bytes]:
    if record.header("ce_specversion") is not None:
        attrs: dict[str, str] = {}
        for name, value in record.headers:
            low = name.lower()
            if low.startswith("ce_"):
                attrs[low[3:]] = _text(value)
            elif low == "content-type":
                attrs["datacontenttype"] = _text(value)
        return _validated(attrs), record.value or b""
    try:
        body = json.loads(record.value or b"")
    except (ValueError, UnicodeDecodeError):
        raise NotACloudEvent("structured record is not JSON") from None
    if not isinstance(body, dict):
        raise NotACloudEvent("structured record is not a JSON object")
    attrs = {
        k: _attribute_text(v)
        for k, v in body.items()
        if k not in ("data", "data_base64") and v is not None
    }
    # Jackson re-serialises the event: a JSON content type when the event names none.
    attrs.setdefault("datacontenttype", "application/json")
    attrs = _validated(attrs)
    data = b""
    if body.get("data_base64") is not None:
        try:
            data = base64.b64decode(body["data_base64"], validate=True)
        except (ValueError, TypeError):
            raise NotACloudEvent("data_base64 is not Base64") from None
    elif "data" in body:
        value = body["data"]
        if isinstance(value, str) and not _is_json(attrs["datacontenttype"]):
            data = value.encode()
        else:
            data = jackson_json(value).encode()
    return attrs, data


def _validated(attrs: dict[str, str]) -> dict[str, str]:
    missing = [name for name in REQUIRED if not attrs.get(name)]
    if missing:
        raise NotACloudEvent(f"missing {', '.join(missing)}")
    if attrs["specversion"] not in SPECVERSIONS:
        raise NotACloudEvent(f"unknown specversion {attrs['specversion']!r}")
    if "time" in attrs:
        try:
            attrs["time"] = java_time(attrs["time"])
        except ValueError as e:
            raise NotACloudEvent(str(e)) from None
    return attrs


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def _attribute_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def _media_type(value: bytes | str) -> str:
    text = _text(value) if isinstance(value, bytes) else value
    return text.split(";")[0].strip().lower()


def _is_json(ctype: str) -> bool:
    media = _media_type(ctype)
    return media == "application/json" or media.endswith("+json") or media == "text/json"


def http_header_name(attribute: str) -> str:
    return "Content-Type" if attribute == "datacontenttype" else f"ce-{attribute}"


def to_http_binary(event: OutgoingEvent, namespace: str) -> tuple[dict[str, bytes], bytes]:
    """Headers (as wire bytes) and body of the binary-mode POST KafkaSource sends; raises
    ``rendering.Unsendable`` when a value holds a control character."""
    headers = {"Prefer": b"reply", "Kn-Namespace": namespace.encode()}
    for name, value in event.attributes.items():
        header = http_header_name(name)
        headers[header] = header_value(header, value)
    return headers, event.data


def to_kafka_binary(event: OutgoingEvent) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """Key, value and headers of the binary-mode Kafka record a KafkaSink writes for the event it
    received over HTTP; the ``partitionkey`` extension becomes the record key."""
    received = {n: as_received(http_header_name(n), v) for n, v in event.attributes.items()}
    headers = [
        ("content-type" if name == "datacontenttype" else f"ce_{name}", value.encode())
        for name, value in received.items()
    ]
    key = received.get("partitionkey")
    return (key.encode() if key is not None else None), event.data, headers
