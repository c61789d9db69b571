"""Delivery of one event as Knative's dispatcher does it: retries, backoff, dead-lettering.

``Deliverer.deliver`` POSTs in binary mode, retries 5xx/404/408/409/429, connection errors and
timeouts with the source's backoff (no jitter, ``Retry-After`` ignored), then hands the event
to the dead-letter sink (sent with the same retry policy) with ``knativeerror*`` extensions and
one extension per ``kne-*`` response header, or drops it and logs. An event whose attribute
holds a control character cannot be put in an HTTP header: every attempt, the dead-letter
sends included, fails before anything is sent, and the record is dropped once the retry
schedules have run (its offset is committed like any finished record).
"""

from __future__ import annotations

import base64
import enum
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from kafkaml.errors import is_retried
from kml.dev.bridge.events import OutgoingEvent, to_http_binary, to_kafka_binary
from kml.dev.bridge.rendering import Unsendable
from kml.dev.bridge.sources import DeliveryPolicy, SinkRef, SourceSpec

log = logging.getLogger("kml.bridge")

ERROR_DATA_MAX_BYTES = 1024
KNE_PREFIX = "kne-"


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
    refused: bool = False
    """The request was never sent: a header value the HTTP client will not write."""

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status < 300

    @property
    def retryable(self) -> bool:
        return self.status is None or is_retried(self.status)


def error_extensions(destination: str, last: Attempt) -> dict[str, str]:
    """What the dead-letter sink gets on top of the event: the destination always; the last
    status, one extension per ``kne-*`` response header (the prefix stripped, the rest
    lower-cased, nothing else changed) and the first 1024 bytes of the body when there was an
    answer (none after a timeout or a connection error)."""
    ext = {"knativeerrordest": destination}
    if last.status is None:
        return ext
    ext["knativeerrorcode"] = str(last.status)
    for name, value in last.headers.items():
        if name.lower().startswith(KNE_PREFIX) and len(name) > len(KNE_PREFIX):
            ext[name[len(KNE_PREFIX) :].lower()] = value
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
        token: str = "",
    ) -> None:
        self.resolver = resolver
        self.stop = stop
        self.producer = producer
        self.kafka_timeout_s = kafka_timeout_s
        # The data plane's credential (scope ``deliver``), as Knative's OIDC token on a cluster.
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
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
            self._log_drop(last, fields)
            return Outcome.DROPPED
        dead = event.with_extensions(error_extensions(dest, last))
        to_dls = self._send_with_retries(
            dead, spec, policy.dead_letter, policy, {**where, "to": "dead-letter"}
        )
        if to_dls is None:
            return Outcome.ABORTED
        fields["dead_letter"] = str(policy.dead_letter)
        if to_dls.ok:
            log.warning("dead-lettered", extra={"fields": fields})
            return Outcome.DEAD_LETTERED
        if to_dls.refused:
            self._log_drop(to_dls, fields)
            return Outcome.DROPPED
        log.error(
            "dead-letter sink failed too; the record is given up like Knative does",
            extra={"fields": {**fields, "dead_letter_error": to_dls.error}},
        )
        return Outcome.DEAD_LETTER_FAILED

    def _log_drop(self, last: Attempt, fields: dict[str, Any]) -> None:
        if last.refused:
            log.error(
                "DROPPED: the event cannot be sent over HTTP (Knative's dispatcher refuses it "
                "the same way: no delivery, no dead letter, the offset is committed); label "
                "the KafkaSource key-type byte-array when the key is binary",
                extra={"fields": fields},
            )
        else:
            log.error(
                "dropped: delivery failed and the source has no dead-letter sink",
                extra={"fields": fields},
            )

    def _send_with_retries(
        self,
        event: OutgoingEvent,
        spec: SourceSpec,
        ref: SinkRef,
        policy: DeliveryPolicy,
        where: dict[str, Any],
    ) -> Attempt | None:
        """Attempts until success, a status that is not retried, or ``policy.retry`` retries;
        None when the bridge stops meanwhile."""
        send = self._sender(event, spec, ref, where)
        attempt = 0
        while True:
            last = send()
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

    def _sender(
        self, event: OutgoingEvent, spec: SourceSpec, ref: SinkRef, where: dict[str, Any]
    ) -> Callable[[], Attempt]:
        """One attempt at sending ``event`` to ``ref`` (a KafkaSink is reached over HTTP on a
        cluster too, so its header rules apply before the record is produced)."""
        try:
            headers, body = to_http_binary(event, spec.namespace)
        except Unsendable as e:
            refused = Attempt(error=str(e), refused=True)
            return lambda: refused
        topic = self.resolver.kafka_topic(ref)
        if topic is not None:
            return lambda: self._produce(topic, event, where)

        def post() -> Attempt:
            url = self.resolver.url(ref)
            if not url:
                return Attempt(error=f"no local address for sink {ref}")
            return self._post(url, headers, body, spec.delivery.timeout_s)

        return post

    def _post(self, url: str, headers: dict[str, bytes], body: bytes, timeout_s: float) -> Attempt:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        try:
            resp = session.post(
                url,
                headers={**headers, **self._auth},
                data=body,
                timeout=timeout_s,
                allow_redirects=False,
            )
        except requests.Timeout:
            return Attempt(error=f"timed out after {timeout_s:g}s")
        except requests.RequestException as e:
            return Attempt(error=f"{type(e).__name__}: connection failed")
        return Attempt(
            status=resp.status_code, body=resp.content or b"", headers=dict(resp.headers)
        )

    def _produce(self, topic: str, event: OutgoingEvent, where: dict[str, Any]) -> Attempt:
        if self.producer is None:
            return Attempt(error="no Kafka producer for the dead-letter topic")
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
            error = f"could not produce to {topic}: {result[:1]}"
            log.error(error, extra={"fields": {**where, "topic": topic}})
            return Attempt(error=error)
        return Attempt(status=202)
