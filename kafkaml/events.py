"""CloudEvent types and the Flask <-> CloudEvents binding (cloudevents 2.x, both content modes).

Attribute values are read exactly as they arrive: Knative's KafkaSource dispatcher writes them
raw (no percent-encoding), so a ``%41`` in a header is three characters of data, never an escape.
Kafka record keys travel Base64-encoded (KafkaSources labelled ``key-type: byte-array``), because
an HTTP header cannot carry every byte; ``record_key`` gives them back exactly.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cloudevents.core.bindings import http as ce_http
from cloudevents.core.exceptions import CloudEventValidationError
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from kafkaml.errors import BadRequest, InvalidEvent
from kafkaml.parsing import loads

# -- event types ------------------------------------------------------------------------------
KAFKA_EVENT = "dev.knative.kafka.event"
MODEL_REGISTER = "kml.model.register"
MODEL_REGISTERED = "kml.model.registered"
CONFIGURATION_CREATE = "kml.configuration.create"
CONFIGURATION_CREATED = "kml.configuration.created"
DEPLOYMENT_CREATE = "kml.deployment.create"
DEPLOYMENT_CREATED = "kml.deployment.created"
INFERENCE_CREATE = "kml.inference.create"
INFERENCE_CREATED = "kml.inference.created"
TRAINING_REQUEST = "kml.training.request"
TRAINING_PROGRESS = "kml.training.progress"
TRAINING_COMPLETED = "kml.training.completed"
TRAINING_FAILED = "kml.training.failed"
INFERENCE_REQUEST = "kml.inference.request"
INFERENCE_RESPONSE = "kml.inference.response"
STREAM_TICK = "kml.stream.tick"
"""Train a window of every open online stream (the local bridge's ticker sends it)."""
PING_EVENT = "dev.knative.sources.ping"
"""A Knative PingSource's cron event (its type is fixed): train takes it as a stream tick."""
STREAM_STOP = "kml.stream.stop"
"""Stop an online stream (``{"stream_id": ...}``): ticks no longer train it; register answers."""
STREAM_STOPPED = "kml.stream.stopped"
MODEL_PROMOTED = "kml.model.promoted"
"""An online stream's window beat the promoted model: a new model version serves the stream."""

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"

KEY_TYPE_LABEL = "kafkasources.sources.knative.dev/key-type"
"""KafkaSource label choosing how the record key reaches the ``key`` extension."""
BYTE_ARRAY_KEYS = {KEY_TYPE_LABEL: "byte-array"}
"""The label every KafkaSource with binary or arbitrary keys carries: keys arrive as Base64, so
any byte survives (with the default ``string`` type a control byte makes the dispatcher drop the
record, and anything outside Latin-1 arrives as ``?``)."""


class _BodyAsIs(JSONFormat):
    """JSON format that leaves a binary-mode body as the bytes it arrived as."""

    def read_data(self, body: bytes, datacontenttype: str | None):
        return bytes(body) if body else None


class _JsonValues(JSONFormat):
    """JSON format that writes any JSON value (not only objects) as JSON in binary mode."""

    def write_data(self, data, datacontenttype):
        return json.dumps(data).encode()


@dataclass(frozen=True)
class Event:
    """A received or outgoing CloudEvent: attributes plus data (bytes in binary mode)."""

    type: str
    source: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    data: Any = None
    attributes: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        return self.attributes.get(name, default)

    @property
    def extensions(self) -> dict[str, Any]:
        core = {
            "type",
            "source",
            "id",
            "specversion",
            "time",
            "subject",
            "datacontenttype",
            "dataschema",
        }
        return {k: v for k, v in self.attributes.items() if k not in core}

    def body_bytes(self) -> bytes:
        if self.data is None:
            return b""
        if isinstance(self.data, (bytes, bytearray)):
            return bytes(self.data)
        if isinstance(self.data, str):
            return self.data.encode()
        return json.dumps(self.data).encode()

    def json(self) -> Any:
        """The data as JSON; a body that is not JSON is a 400 naming the problem."""
        if isinstance(self.data, (dict, list)):
            return self.data
        raw = self.body_bytes()
        if not raw:
            raise BadRequest(f"event {self.type} has no data", event_id=self.id)
        try:
            return loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"event data is not valid JSON: {e}", event_id=self.id) from None

    def to_cloudevent(self) -> CloudEvent:
        attrs = {
            "specversion": "1.0",
            **self.attributes,
            "type": self.type,
            "source": self.source,
            "id": self.id,
        }
        attrs.setdefault("time", datetime.now(UTC))
        if isinstance(self.data, (dict, list, int, float, bool)):
            attrs.setdefault("datacontenttype", "application/json")
        return CloudEvent(attrs, self.data)


def parse_http(headers: dict[str, str], body: bytes) -> Event:
    """Parse an HTTP request in binary or structured content mode; bad input is ``InvalidEvent``."""
    lowered = {k.lower(): v for k, v in headers.items()}
    binary = any(k.startswith("ce-") for k in lowered)
    structured = lowered.get("content-type", "").split(";")[0].strip() == STRUCTURED_CONTENT_TYPE
    if not binary and not structured:
        raise InvalidEvent(
            "not a CloudEvent: send ce-* headers (binary mode) or "
            f"Content-Type: {STRUCTURED_CONTENT_TYPE} (structured mode)"
        )
    if binary and "ce-type" not in lowered:
        raise InvalidEvent("CloudEvent has no type (missing ce-type header)")
    if binary:
        # The SDK percent-decodes ce-* values; escaping every '%' first makes that decoding give
        # back the value as it was sent, which is how KafkaSource's dispatcher sends it.
        lowered = {
            k: v.replace("%", "%25") if k.startswith("ce-") else v for k, v in lowered.items()
        }
    message = ce_http.HTTPMessage(headers=dict(lowered), body=body)
    try:
        if binary:
            ce = ce_http.from_binary(message, _BodyAsIs())
        else:
            ce = ce_http.from_structured(message, JSONFormat())
    except CloudEventValidationError as e:
        raise InvalidEvent(f"invalid CloudEvent: {e}") from None
    # AttributeError: a structured body that is JSON but not an object (``null``, a list)
    except (
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        UnicodeDecodeError,
        RecursionError,
    ) as e:
        raise InvalidEvent(f"CloudEvent does not parse: {type(e).__name__}: {e}") from None
    attrs = dict(ce.get_attributes())
    return Event(
        type=attrs.get("type", ""),
        source=attrs.get("source", ""),
        id=str(attrs.get("id", "")),
        data=ce.get_data(),
        attributes=attrs,
    )


def record_key(event: Event) -> bytes | None:
    """The Kafka record key of a ``dev.knative.kafka.event``, byte for byte; None without a key.

    The source carries ``key-type: byte-array`` (``BYTE_ARRAY_KEYS``), so ``key`` is Base64; a
    value that is not Base64 means the source delivers keys as text, which loses bytes: a 400
    naming the label to set.
    """
    value = event.get("key")
    if value is None:
        return None
    text = str(value)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidEvent(
            f"key: {text[:40]!r} is not Base64; the KafkaSource must carry the label "
            f"{KEY_TYPE_LABEL}: byte-array so record keys arrive intact",
            event_id=event.id,
        ) from None


def to_http(event: Event, structured: bool = False) -> tuple[dict[str, str], bytes]:
    """Headers and body for sending ``event``; binary mode unless ``structured``."""
    ce = event.to_cloudevent()
    if structured:
        msg = ce_http.to_structured(ce, JSONFormat())
    else:
        # The SDK writes only dict data as JSON in binary mode; any other JSON value (a list of
        # instances, a number) goes through json.dumps here so the body is always valid JSON.
        fmt = _JsonValues() if isinstance(event.data, (list, int, float, bool)) else JSONFormat()
        msg = ce_http.to_binary(ce, fmt)
    return dict(msg.headers), msg.body


def new_event(type_: str, source: str, data: Any, **extensions: Any) -> Event:
    return Event(type=type_, source=source, data=data, attributes=dict(extensions))


def to_kafka_structured(event: Event) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Value and headers to publish ``event`` on a Kafka topic in structured mode."""
    headers, body = to_http(event, structured=True)
    return body, [("content-type", STRUCTURED_CONTENT_TYPE.encode())]
