"""KafkaSource manifests as the bridge reads them: topics, group, sink, delivery, ordering.

Pure parsing, no Kafka and no HTTP: ``parse_kafka_source(doc)`` turns one manifest into a
``SourceSpec``; ``DeliveryPolicy.from_spec`` applies Knative's defaulting rules exactly: no
``spec.delivery`` means 10 retries, exponential, 300 ms, 600 s per attempt; a ``delivery`` with
fields left out means 0 retries, 200 ms and 600 s for them (they are not merged).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafkaml.events import KEY_TYPE_LABEL
from kml.kustomize import build, load_documents

KEY_TYPES = ("string", "int", "float", "byte-array")
BACKOFF_POLICIES = ("exponential", "linear")
ORDERINGS = ("ordered", "unordered")
UNORDERED_IN_FLIGHT = 50
"""Unordered sources stop polling once this many events are in flight (per consumer)..."""
UNORDERED_POLL_BATCH = 50
"""... but send every record of a poll at once, so up to 49 + 50 = 99 can be in flight."""

_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


class SourceError(ValueError):
    """A KafkaSource manifest the bridge cannot follow; the message names the source and field."""


def parse_duration(text: str) -> float:
    """An ISO 8601 duration (``PT0.3S``, ``PT10M``, ``P1DT2H``) in seconds."""
    m = _DURATION.match(text or "")
    if not m or text in ("P", "PT") or text.endswith("T"):
        raise SourceError(f"{text!r} is not an ISO 8601 duration such as PT0.5S")
    parts = {k: float(v) for k, v in m.groupdict().items() if v is not None}
    return (
        parts.get("d", 0) * 86400
        + parts.get("h", 0) * 3600
        + parts.get("m", 0) * 60
        + parts.get("s", 0)
    )


@dataclass(frozen=True)
class SinkRef:
    """Where events go: a reference (kind + name) or an absolute ``uri``."""

    kind: str = ""
    name: str = ""
    namespace: str = ""
    api_version: str = ""
    uri: str = ""

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None, namespace: str, where: str) -> SinkRef:
        if not spec:
            raise SourceError(f"{where}: no sink")
        ref = spec.get("ref") or {}
        if not ref and not spec.get("uri"):
            raise SourceError(f"{where}: needs ref or uri")
        return cls(
            kind=ref.get("kind", ""),
            name=ref.get("name", ""),
            namespace=ref.get("namespace") or namespace,
            api_version=ref.get("apiVersion", ""),
            uri=spec.get("uri", ""),
        )

    def __str__(self) -> str:
        return self.uri or f"{self.kind}/{self.namespace}/{self.name}"


@dataclass(frozen=True)
class DeliveryPolicy:
    """Retries, backoff and per-attempt timeout of one source (seconds)."""

    retry: int = 10
    backoff_policy: str = "exponential"
    backoff_delay_s: float = 0.3
    timeout_s: float = 600.0
    dead_letter: SinkRef | None = None

    @classmethod
    def from_spec(
        cls, delivery: dict[str, Any] | None, namespace: str = "", where: str = "delivery"
    ) -> DeliveryPolicy:
        """Knative's rule: no ``delivery`` -> 10 retries, exponential, PT0.3S, PT600S; with a
        ``delivery``, unset fields are NOT merged with those: retry 0, 200 ms, 600 s."""
        if delivery is None:
            return cls()
        policy = delivery.get("backoffPolicy") or "exponential"
        if policy not in BACKOFF_POLICIES:
            raise SourceError(f"{where}.backoffPolicy: {policy!r} is not one of {BACKOFF_POLICIES}")
        retry = delivery.get("retry", 0)
        if not isinstance(retry, int) or retry < 0:
            raise SourceError(f"{where}.retry: {retry!r} is not a non-negative integer")
        dls = delivery.get("deadLetterSink")
        dls_where = f"{where}.deadLetterSink"
        return cls(
            retry=retry,
            backoff_policy=policy,
            backoff_delay_s=_duration_field(delivery, "backoffDelay", 0.2, where),
            timeout_s=_duration_field(delivery, "timeout", 600.0, where),
            dead_letter=SinkRef.from_spec(dls, namespace, dls_where) if dls else None,
        )

    def backoff(self, n: int) -> float:
        """Seconds to wait before retry ``n`` (1-based); no jitter."""
        if self.backoff_policy == "linear":
            return self.backoff_delay_s * n
        return self.backoff_delay_s * (2**n)


def _duration_field(delivery: dict[str, Any], name: str, default: float, where: str) -> float:
    if delivery.get(name) in (None, ""):
        return default
    try:
        return parse_duration(str(delivery[name]))
    except SourceError as e:
        raise SourceError(f"{where}.{name}: {e}") from None


@dataclass(frozen=True)
class SourceSpec:
    """One KafkaSource as the bridge plays it."""

    name: str
    namespace: str
    topics: tuple[str, ...]
    consumer_group: str
    sink: SinkRef
    delivery: DeliveryPolicy
    ordered: bool = True
    ce_overrides: dict[str, str] = field(default_factory=dict)
    key_type: str = "string"
    initial_offset: str = "latest"
    origin: str = ""

    def source_attribute(self, topic: str) -> str:
        return f"/apis/v1/namespaces/{self.namespace}/kafkasources/{self.name}#{topic}"

    @property
    def max_in_flight(self) -> int:
        """Events in flight at most: one per partition, or (unordered) 49 plus a poll batch."""
        return 1 if self.ordered else UNORDERED_IN_FLIGHT - 1 + UNORDERED_POLL_BATCH


def is_kafka_source(doc: dict[str, Any]) -> bool:
    return doc.get("kind") == "KafkaSource" and str(doc.get("apiVersion", "")).startswith(
        "sources.knative.dev/"
    )


def parse_kafka_source(
    doc: dict[str, Any], default_namespace: str = "default", origin: str = ""
) -> SourceSpec:
    meta = doc.get("metadata") or {}
    name = meta.get("name") or ""
    namespace = meta.get("namespace") or default_namespace
    where = f"KafkaSource {namespace}/{name}"
    spec = doc.get("spec") or {}
    topics = tuple(spec.get("topics") or ())
    if not name or not topics:
        raise SourceError(f"{where}: needs metadata.name and spec.topics")
    ordering = spec.get("ordering") or "ordered"
    if ordering not in ORDERINGS:
        raise SourceError(f"{where}: spec.ordering {ordering!r} is not one of {ORDERINGS}")
    key_type = (meta.get("labels") or {}).get(KEY_TYPE_LABEL) or "string"
    if key_type not in KEY_TYPES:
        raise SourceError(f"{where}: label {KEY_TYPE_LABEL}={key_type!r} is not one of {KEY_TYPES}")
    initial = spec.get("initialOffset") or "latest"
    if initial not in ("earliest", "latest"):
        raise SourceError(f"{where}: spec.initialOffset {initial!r} is not earliest or latest")
    overrides = (spec.get("ceOverrides") or {}).get("extensions") or {}
    return SourceSpec(
        name=name,
        namespace=namespace,
        topics=topics,
        consumer_group=spec.get("consumerGroup") or f"knative-kafka-source-{namespace}-{name}",
        sink=SinkRef.from_spec(spec.get("sink"), namespace, f"{where}: spec.sink"),
        delivery=DeliveryPolicy.from_spec(
            spec.get("delivery"), namespace, f"{where}: spec.delivery"
        ),
        ordered=ordering == "ordered",
        ce_overrides={str(k): str(v) for k, v in overrides.items()},
        key_type=key_type,
        initial_offset=initial,
        origin=origin,
    )


@dataclass
class Manifests:
    """What the bridge needs from a set of manifests: sources and the KafkaSinks' topics."""

    sources: list[SourceSpec] = field(default_factory=list)
    kafka_sinks: dict[tuple[str, str], str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add(self, docs: list[dict[str, Any]], default_namespace: str, origin: str) -> None:
        for doc in docs:
            meta = doc.get("metadata") or {}
            if doc.get("kind") == "KafkaSink":
                key = (meta.get("namespace") or default_namespace, meta.get("name", ""))
                self.kafka_sinks[key] = (doc.get("spec") or {}).get("topic", "")
            elif is_kafka_source(doc):
                try:
                    self.sources.append(parse_kafka_source(doc, default_namespace, origin))
                except SourceError as e:
                    self.problems.append(f"{origin}: {e}")


def read_manifests(base_dir: Path, sources_dir: Path | None, default_namespace: str) -> Manifests:
    """Sources of the kustomize build of ``base_dir`` plus every ``sources_dir/*.yaml``."""
    found = Manifests()
    found.add(build(base_dir), default_namespace, str(base_dir))
    if sources_dir is not None and sources_dir.is_dir():
        for path in sorted(sources_dir.glob("*.yaml")):
            try:
                found.add(load_documents(path), default_namespace, str(path))
            except (OSError, ValueError) as e:
                found.problems.append(f"{path}: {e}")
    return found
