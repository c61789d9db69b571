"""What KafkaSource makes of a Kafka record, and how the event travels (pure functions).

``record_to_event`` synthesizes the attributes of a raw record or passes a record that already
is a CloudEvent through; ``to_http_binary`` and ``to_kafka_binary`` write an event in binary
content mode. The rules are docs/knative-kafkasource.md "What KafkaSource sends".
"""

from __future__ import annotations

import base64
import json
import re
import struct
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from kml.dev.bridge.sources import SourceSpec

KAFKA_EVENT_TYPE = "dev.knative.kafka.event"
STRUCTURED = "application/cloudevents+json"
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


@dataclass
class _Parsed:
    attributes: dict[str, str] = field(default_factory=dict)
    data: bytes = b""


def rfc3339_millis(timestamp_ms: int) -> str:
    moment = datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{timestamp_ms % 1000:03d}Z"


def header_extension_name(header: str) -> str:
    """``kafkaheader`` + the header name lower-cased without characters outside [a-z0-9]."""
    return "kafkaheader" + _NOT_ALNUM.sub("", header.lower())


def java_float(value: float, single: bool) -> str:
    """Java's ``Float.toString`` / ``Double.toString`` (how the key reaches the header)."""
    x = np.float32(value) if single else np.float64(value)
    if np.isnan(x):
        return "NaN"
    if np.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "-0.0" if np.signbit(x) else "0.0"
    if 1e-3 <= abs(float(x)) < 1e7:
        text = np.format_float_positional(x, unique=True, trim="0")
        return text + "0" if text.endswith(".") else text
    mantissa, exponent = np.format_float_scientific(x, unique=True, trim="0").split("e")
    if mantissa.endswith("."):
        mantissa += "0"
    return f"{mantissa}E{int(exponent)}"


def key_extension(key: bytes, key_type: str) -> str:
    """The ``key`` extension per the key-type label (Kafka's deserializers, big-endian)."""
    if key_type == "byte-array":
        return base64.b64encode(key).decode()
    if key_type == "int" and len(key) == 4:
        return str(struct.unpack(">i", key)[0])
    if key_type == "float" and len(key) in (4, 8):
        return java_float(struct.unpack(">f" if len(key) == 4 else ">d", key)[0], len(key) == 4)
    return key.decode("utf-8", errors="replace")


def is_cloudevent(record: Record) -> bool:
    if record.header("ce_specversion") is not None:
        return True
    ctype = record.header("content-type")
    return ctype is not None and _media_type(ctype) == STRUCTURED


def record_to_event(record: Record, spec: SourceSpec) -> OutgoingEvent:
    """The event KafkaSource delivers for ``record`` (with partition, offset and overrides)."""
    if is_cloudevent(record):
        parsed = _from_kafka_cloudevent(record)
        event = OutgoingEvent(parsed.attributes, parsed.data, passed_through=True)
    else:
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
        attrs["time"] = rfc3339_millis(record.timestamp_ms)
    ctype = record.header("content-type")
    if ctype is not None:
        attrs["datacontenttype"] = ctype.decode("utf-8", errors="replace").lower()
    if record.key is not None:
        attrs["key"] = attrs["partitionkey"] = key_extension(record.key, spec.key_type)
    for name, value in record.headers:
        if name.lower() != "content-type":
            attrs[header_extension_name(name)] = value.decode("utf-8", errors="replace")
    return attrs


def _from_kafka_cloudevent(record: Record) -> _Parsed:
    if record.header("ce_specversion") is not None:
        parsed = _Parsed(data=record.value or b"")
        for name, value in record.headers:
            low = name.lower()
            if low.startswith("ce_"):
                parsed.attributes[low[3:]] = value.decode("utf-8", errors="replace")
            elif low == "content-type":
                parsed.attributes["datacontenttype"] = value.decode("utf-8", errors="replace")
        return parsed
    body = json.loads(record.value or b"{}")
    parsed = _Parsed()
    for name, value in body.items():
        if name in ("data", "data_base64"):
            continue
        parsed.attributes[name] = _attribute_text(value)
    if body.get("data_base64") is not None:
        parsed.data = base64.b64decode(body["data_base64"])
    elif "data" in body:
        data = body["data"]
        ctype = parsed.attributes.get("datacontenttype", "application/json")
        if isinstance(data, str) and not _is_json(ctype):
            parsed.data = data.encode()
        else:
            parsed.data = json.dumps(data, separators=(",", ":")).encode()
    return parsed


def _attribute_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def _media_type(value: bytes | str) -> str:
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
    return text.split(";")[0].strip().lower()


def _is_json(ctype: str) -> bool:
    media = _media_type(ctype)
    return media == "application/json" or media.endswith("+json") or media == "text/json"


def percent_encode(value: str) -> str:
    """CloudEvents HTTP binding: encode space, ``"``, ``%`` and anything outside U+0021..U+007E."""
    out = []
    for ch in value:
        if "\x21" <= ch <= "\x7e" and ch not in '"%':
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def to_http_binary(event: OutgoingEvent, namespace: str) -> tuple[dict[str, str], bytes]:
    """Headers and body of the binary-mode POST KafkaSource sends."""
    headers = {"Prefer": "reply", "Kn-Namespace": namespace}
    for name, value in event.attributes.items():
        if name == "datacontenttype":
            headers["Content-Type"] = value
        else:
            headers[f"ce-{name}"] = percent_encode(value)
    return headers, event.data


def to_kafka_binary(event: OutgoingEvent) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """Key, value and headers of the event as a binary-mode Kafka record (KafkaSink's default);
    the ``partitionkey`` extension becomes the record key."""
    headers: list[tuple[str, bytes]] = []
    for name, value in event.attributes.items():
        header = "content-type" if name == "datacontenttype" else f"ce_{name}"
        headers.append((header, value.encode()))
    key = event.attributes.get("partitionkey")
    return (key.encode() if key is not None else None), event.data, headers
