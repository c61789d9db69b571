"""Delivery of one event as Knative's dispatcher does it: retries, backoff, dead-lettering.

``Deliverer.deliver`` POSTs in binary mode, retries 5xx/404/408/409/429, connection errors and
timeouts with the source's backoff (no jitter, ``Retry-After`` ignored), then hands the event
to the dead-letter sink with ``knativeerror*`` and ``kne-*`` extensions, or drops it and logs.
"""

from __future__ import annotations

import base64
import enum
import json
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from kafkaml.errors import is_retried
from kml.dev.bridge.events import OutgoingEvent, to_http_binary, to_kafka_binary
from kml.dev.bridge.sources import DeliveryPolicy, SinkRef, SourceSpec

log = logging.getLogger("kml.bridge")

ERROR_DATA_MAX_BYTES = 1024
_NOT_ALNUM = re.compile(r"[^a-z0-9]")


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    DEAD_LETTERED = "dead-lettered"
    DROPPED = "dropped"
    DEAD_LETTER_FAILED = "dead-letter-failed"
    ABORTED = "aborted"

    @property
    def finished(self) -> bool:
        """Whether the record's offset may be committed (everything but a shutdown)."""
        return self is not Outcome.ABORTED


@dataclass(frozen=True)
class Attempt:
    """The answer to one POST: a status, or an ``error`` when there was no response."""

    status: int | None = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status < 300

    @property
    def retryable(self) -> bool:
        return self.status is None or is_retried(self.status)


def error_extensions(destination: str, last: Attempt) -> dict[str, str]:
    """What the dead-letter sink gets on top of the event (Knative's RecordDispatcherImpl)."""
    ext = {"knativeerrordest": destination}
    if last.status is None:
        return ext
    ext["knativeerrorcode"] = str(last.status)
    for name, value in last.headers.items():
        if name.lower().startswith("kne-"):
            ext[_NOT_ALNUM.sub("", name[4:].lower())] = value
    if last.body:
        ext["knativeerrordata"] = base64.b64encode(last.body[:ERROR_DATA_MAX_BYTES]).decode()
    return ext


class SinkResolver:
    """Local addresses for sink refs: register/train ports, ``services/<name>.json``, KafkaSinks."""

    def __init__(
        self,
        fixed: dict[str, str],
        services_dir: Path | None,
        kafka_sinks: dict[tuple[str, str], str],
    ) -> None:
        self.fixed = fixed
        self.services_dir = services_dir
        self.kafka_sinks = kafka_sinks

    def kafka_topic(self, ref: SinkRef) -> str | None:
        if ref.kind != "KafkaSink":
            return None
        return self.kafka_sinks.get((ref.namespace, ref.name)) or None

    def url(self, ref: SinkRef) -> str | None:
        if ref.uri:
            return ref.uri
        if ref.name in self.fixed:
            return self.fixed[ref.name]
        if self.services_dir is None:
            return None
        try:
            found = json.loads((self.services_dir / f"{ref.name}.json").read_text())
        except (OSError, ValueError):
            return None
        return found.get("url") if isinstance(found, dict) else None


class Deliverer:
    """Sends events for every source; one instance is shared by the source consumers."""

    def __init__(
        self,
        resolver: SinkResolver,
        stop: threading.Event,
        producer: Any | None = None,
        kafka_timeout_s: float = 30.0,
    ) -> None:
        self.resolver = resolver
        self.stop = stop
        self.producer = producer
        self.kafka_timeout_s = kafka_timeout_s
        self._local = threading.local()

    def deliver(self, event: OutgoingEvent, spec: SourceSpec, where: dict[str, Any]) -> Outcome:
        policy = spec.delivery
        dest = self.resolver.url(spec.sink) or f"unresolved:{spec.sink}"
        last = self._send_with_retries(event, spec, spec.sink, policy, where)
        if last is None:
            return Outcome.ABORTED
        if last.ok:
            return Outcome.DELIVERED
        fields = {**where, "status": last.status, "error": last.error, "sink": dest}
        if policy.dead_letter is None:
            log.error(
                "dropped: delivery failed and the source has no dead-letter sink",
                extra={"fields": fields},
            )
            return Outcome.DROPPED
        dead = event.with_extensions(error_extensions(dest, last))
        if self._dead_letter(dead, spec, policy, where):
            log.warning(
                "dead-lettered",
                extra={"fields": {**fields, "dead_letter": str(policy.dead_letter)}},
            )
            return Outcome.DEAD_LETTERED
        if self.stop.is_set():
            return Outcome.ABORTED
        log.error(
            "dead-letter sink failed too; the record is given up like Knative does",
            extra={"fields": {**fields, "dead_letter": str(policy.dead_letter)}},
        )
        return Outcome.DEAD_LETTER_FAILED

    def _dead_letter(
        self, event: OutgoingEvent, spec: SourceSpec, policy: DeliveryPolicy, where: dict[str, Any]
    ) -> bool:
        ref = policy.dead_letter
        assert ref is not None
        topic = self.resolver.kafka_topic(ref)
        if topic is not None:
            return self._produce(topic, event, where)
        last = self._send_with_retries(event, spec, ref, policy, {**where, "to": "dead-letter"})
        return last is not None and last.ok

    def _send_with_retries(
        self,
        event: OutgoingEvent,
        spec: SourceSpec,
        ref: SinkRef,
        policy: DeliveryPolicy,
        where: dict[str, Any],
    ) -> Attempt | None:
        headers, body = to_http_binary(event, spec.namespace)
        attempt = 0
        while True:
            url = self.resolver.url(ref)
            last = (
                self._post(url, headers, body, policy.timeout_s)
                if url
                else Attempt(error=f"no local address for sink {ref}")
            )
            if last.ok or not last.retryable or attempt >= policy.retry:
                return last
            attempt += 1
            delay = policy.backoff(attempt)
            log.info(
                "retrying",
                extra={
                    "fields": {
                        **where,
                        "attempt": attempt,
                        "status": last.status,
                        "error": last.error,
                        "backoff_s": delay,
                    }
                },
            )
            if self.stop.wait(delay):
                return None

    def _post(self, url: str, headers: dict[str, str], body: bytes, timeout_s: float) -> Attempt:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        try:
            resp = session.post(
                url, headers=headers, data=body, timeout=timeout_s, allow_redirects=False
            )
        except requests.Timeout:
            return Attempt(error=f"timed out after {timeout_s:g}s")
        except requests.RequestException as e:
            return Attempt(error=f"{type(e).__name__}: connection failed")
        return Attempt(
            status=resp.status_code, body=resp.content or b"", headers=dict(resp.headers)
        )

    def _produce(self, topic: str, event: OutgoingEvent, where: dict[str, Any]) -> bool:
        if self.producer is None:
            log.error("no Kafka producer for the dead-letter topic", extra={"fields": where})
            return False
        key, value, headers = to_kafka_binary(event)
        result: list[Any] = []
        self.producer.produce(
            topic,
            value=value,
            key=key,
            headers=headers,
            on_delivery=lambda err, msg: result.append(err),
        )
        self.producer.flush(self.kafka_timeout_s)
        if not result or result[0] is not None:
            log.error(
                "could not produce to the dead-letter topic",
                extra={"fields": {**where, "topic": topic, "error": str(result[:1])}},
            )
            return False
        return True
