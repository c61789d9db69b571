"""Kafka-ML control messages: parse, validate (every problem at once), serialise.

The record codecs (RAW, AVRO, JSON) live in ``kafkaml.codecs`` and are re-exported here, so
``from kafkaml.wire import codec_for`` is the one import both sides of the wire use.

Deployment id from the record key (documented rule, see ``deployment_id_from_key``):
a key made only of ASCII decimal digits is that id ("7", "300"); any other single character is
Kafka-ML's one-byte key and the id is its code point (``bytes([7])`` -> "7"); any other
UTF-8 string of letters, digits, ``.``, ``_``, ``-`` is the id as is. A one-byte Kafka-ML id
48..57 is therefore read as the digit it encodes. Every one-byte id 0..255 arrives intact only
through a KafkaSource labelled ``key-type: byte-array`` (the key Base64 in the ``key``
extension): with Knative's default ``string`` type the dispatcher drops a key holding a control
byte, sends 9 as an empty value and 128..255 as ``?``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from kafkaml.codecs import (
    AvroCodec,
    Codec,
    InvalidControlMessage,
    JsonCodec,
    RawCodec,
    UndecodableRecord,
    codec_for,
    codec_problems,
)
from kafkaml.parsing import is_digits, loads

__all__ = [
    "Codec",
    "ControlMessage",
    "InvalidControlMessage",
    "OffsetRange",
    "UndecodableRecord",
    "codec_for",
    "control_message_key",
    "deployment_id_from_key",
    "parse_control_message",
    "to_control_message_bytes",
]

FORMATS = tuple(codec.input_format for codec in (RawCodec, AvroCodec, JsonCodec))
"""The record formats a control message or an inference spec may name: one codec each."""
TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
"""A Kafka topic name (Kafka's own rule)."""
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
"""A deployment id, and every registry name and id: one S3 key segment, no '/'."""
_REPLACEMENT = "\ufffd"


@dataclass(frozen=True)
class OffsetRange:
    """Offsets ``start`` (inclusive) to ``end`` (exclusive) of one partition."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def count(self) -> int:
        return self.end - self.start

    def __str__(self) -> str:
        return f"{self.topic}:{self.partition}:{self.start}:{self.end}"


@dataclass(frozen=True)
class ControlMessage:
    """A Kafka-ML control message (every field of the wire doc) plus the deployment id."""

    deployment_id: str
    topic: str
    input_format: str
    input_config: dict[str, Any] = field(default_factory=dict, hash=False)
    validation_rate: float = 0.0
    test_rate: float = 0.0
    total_msg: int | None = None
    description: str = ""
    unsupervised_topic: str | None = None
    dataset_restrictions: dict[str, Any] | str = field(default_factory=dict, hash=False)
    incremental: bool = False
    online: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    """Online (incremental) training only: the stream policy (``online_policy``)."""

    @cached_property
    def ranges(self) -> tuple[OffsetRange, ...]:
        """The offset ranges named by ``topic`` (already validated when parsed)."""
        ranges, problems = parse_topic_ranges(self.topic)
        if problems:
            raise InvalidControlMessage("invalid control message", problems)
        return ranges

    @property
    def record_count(self) -> int:
        return sum(r.count for r in self.ranges)

    def body(self) -> dict[str, Any]:
        """The JSON value in Kafka-ML's field order (the deployment id travels as the key)."""
        return {
            "topic": self.topic,
            "input_format": self.input_format,
            "description": self.description,
            "input_config": self.input_config,
            "validation_rate": self.validation_rate,
            "test_rate": self.test_rate,
            "total_msg": self.total_msg,
            "unsupervised_topic": self.unsupervised_topic,
            "dataset_restrictions": self.dataset_restrictions,
            "incremental": self.incremental,
        }

    def stream_id(self) -> str:
        """Content hash of the message without its deployment: the datasource id."""
        canonical = json.dumps(self.body(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:24]

    def run_id(self) -> str:
        """Deterministic run id from everything that defines what the run trains: the
        deployment, the offset ranges, the input format and config, the validation and test
        rates. The same ranges sent again with other settings are another run, never the old
        run's answer; a redelivery (or a new ``description``) is the same run."""
        ranges = [str(r) for r in sorted(self.ranges, key=lambda r: (r.topic, r.partition))]
        defining = {
            "deployment_id": self.deployment_id,
            "ranges": ranges,
            "input_format": str(self.input_format).upper(),
            "input_config": self.input_config,
            "validation_rate": float(self.validation_rate),  # 0 and 0.0 are one rate
            "test_rate": float(self.test_rate),
        }
        canonical = json.dumps(defining, sort_keys=True, separators=(",", ":"), default=str)
        return f"run-{hashlib.sha256(canonical.encode()).hexdigest()[:20]}"

    def with_deployment(self, deployment_id: str) -> ControlMessage:
        from dataclasses import replace

        return replace(self, deployment_id=deployment_id)


def parse_topic_ranges(topic: Any) -> tuple[tuple[OffsetRange, ...], list[str]]:
    """``t:p:start:end,...`` into ranges, with every problem found."""
    if not isinstance(topic, str) or not topic.strip():
        return (), ["topic: must be a non-empty string 'topic:partition:start:end,...'"]
    ranges: list[OffsetRange] = []
    problems: list[str] = []
    seen: set[tuple[str, int]] = set()
    for i, entry in enumerate(topic.split(",")):
        parts = entry.strip().split(":")
        where = f"topic entry {i} {entry.strip()!r}"
        if len(parts) != 4:
            problems.append(f"{where}: expected 'topic:partition:start:end' (end exclusive)")
            continue
        name, *nums = parts
        if not TOPIC_RE.match(name):
            problems.append(f"{where}: {name!r} is not a valid Kafka topic name")
            continue
        if not all(is_digits(n) for n in nums):
            problems.append(f"{where}: partition, start and end must be non-negative integers")
            continue
        partition, start, end = (int(n) for n in nums)
        if end < start:
            problems.append(f"{where}: end {end} is before start {start}")
            continue
        if (name, partition) in seen:
            problems.append(f"{where}: partition {name}:{partition} is named twice")
            continue
        seen.add((name, partition))
        ranges.append(OffsetRange(name, partition, start, end))
    return tuple(ranges), problems


def deployment_id_from_key(key: bytes | str | None) -> tuple[str | None, str | None]:
    """``(id, None)`` or ``(None, problem)`` following the module's documented rule.

    ``key`` is the record key's bytes as produced (one byte: Kafka-ML's id 0..255), or a text
    key already decoded by whoever delivered it.
    """
    if key is None or len(key) == 0:
        return None, "key: missing (the record key carries the deployment id)"
    if isinstance(key, bytes):
        if len(key) == 1:
            text = chr(key[0])  # Kafka-ML's one byte 0..255; an ASCII digit reads as that digit
        else:
            try:
                text = key.decode("utf-8")
            except UnicodeDecodeError:
                return None, "key: not UTF-8 and not a one-byte Kafka-ML id"
    else:
        text = key
    if text.isascii() and text.isdigit():
        return str(int(text)), None
    if len(text) == 1:
        if text == _REPLACEMENT:
            return None, (
                "key: a byte that is not UTF-8 was replaced on the way (a KafkaSource with "
                "the string key type); label the source key-type byte-array"
            )
        return str(ord(text)), None
    if not ID_RE.match(text) or ".." in text:
        return None, (
            f"key: {text[:60]!r} is not a deployment id (letters, digits, '.', '_', "
            "'-', or Kafka-ML's one-byte id)"
        )
    return text, None


def _rate(body: dict[str, Any], name: str, problems: list[str]) -> float:
    value = body.get(name, 0) if body.get(name) is not None else 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems.append(f"{name}: {value!r} must be a number in [0, 1)")
        return 0.0
    if not 0 <= value < 1:
        problems.append(f"{name}: {value!r} is out of range [0, 1)")
    return float(value)


ONLINE_DEFAULTS: dict[str, Any] = {
    "stream_timeout": 60000,
    "monitoring_metric": "val_loss",
    "change": "down",
    "improvement": 0.05,
    "indefinite": False,
    "window_records": None,
}
"""Kafka-ML's online deployment fields and their defaults (``window_records``: ours, no cap)."""


def online_policy(body: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """The online fields of ``body`` (Kafka-ML's names, its defaults), problems appended."""
    policy = {k: body.get(k) if body.get(k) is not None else v for k, v in ONLINE_DEFAULTS.items()}
    timeout = policy["stream_timeout"]
    if isinstance(timeout, bool) or not isinstance(timeout, int) or (timeout < 0 and timeout != -1):
        problems.append(
            f"stream_timeout: {timeout!r} must be milliseconds >= 0, or -1 (indefinite)"
        )
    metric = policy["monitoring_metric"]
    if not isinstance(metric, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", metric):
        problems.append(f"monitoring_metric: {str(metric)[:60]!r} is not a metric name")
    if policy["change"] not in ("up", "down"):
        problems.append(f"change: {policy['change']!r} must be 'up' or 'down'")
    improvement = policy["improvement"]
    if (
        isinstance(improvement, bool)
        or not isinstance(improvement, (int, float))
        or improvement < 0
    ):
        problems.append(f"improvement: {improvement!r} must be a number >= 0")
    if not isinstance(policy["indefinite"], bool):
        problems.append(f"indefinite: {policy['indefinite']!r} must be true or false")
    window = policy["window_records"]
    if window is not None and (
        isinstance(window, bool) or not isinstance(window, int) or window < 1
    ):
        problems.append(f"window_records: {window!r} must be a positive integer or null")
    return policy


def parse_control_message(
    value: bytes, key: bytes | str | None, *, deployment_id: str | None = None
) -> ControlMessage:
    """Validate; ``InvalidControlMessage`` lists every bad field (status 400 for bad JSON)."""
    try:
        body = loads(value)
    except (ValueError, UnicodeDecodeError, TypeError) as e:
        raise InvalidControlMessage(
            "control message is not valid JSON", [f"value: {e}"], status=400
        ) from None
    if not isinstance(body, dict):
        raise InvalidControlMessage(
            "invalid control message", [f"value: expected a JSON object, got {type(body).__name__}"]
        )
    problems: list[str] = []
    if deployment_id is None:  # from the record key, Kafka-ML's one-byte form included
        deployment_id, key_problem = deployment_id_from_key(key)
        if key_problem:
            problems.append(key_problem)
    elif not isinstance(deployment_id, str) or not ID_RE.match(deployment_id):
        problems.append(
            f"deployment_id: {str(deployment_id)[:60]!r} is not a deployment id "
            "(letters, digits, '.', '_', '-')"
        )

    incremental = body.get("incremental", False)
    if not isinstance(incremental, bool):
        problems.append(f"incremental: {incremental!r} must be true or false")

    topic = body.get("topic")
    ranges: tuple[OffsetRange, ...] = ()
    online: dict[str, Any] | None = None
    if "topic" not in body:
        problems.append("topic: required")
    elif incremental is True:  # Kafka-ML's OnlineRawSink: a bare topic, no offsets
        if not isinstance(topic, str) or not TOPIC_RE.match(topic):
            problems.append(
                f"topic: {str(topic)[:60]!r} must be a bare Kafka topic name when incremental"
            )
        online = online_policy(body, problems)
    elif not incremental:
        ranges, topic_problems = parse_topic_ranges(topic)
        problems += topic_problems
        if not topic_problems and sum(r.count for r in ranges) == 0:
            problems.append("topic: the ranges hold no records")

    fmt = body.get("input_format")
    if fmt is None:
        problems.append("input_format: required")
    elif not isinstance(fmt, str) or fmt.upper() not in FORMATS:
        problems.append(f"input_format: {fmt!r} is not one of {', '.join(FORMATS)}")
    config = body.get("input_config", body.get("configuration"))
    if config is None:
        problems.append("input_config: required")
    elif not isinstance(config, dict):
        problems.append("input_config: must be a JSON object")
    elif isinstance(fmt, str) and fmt.upper() in FORMATS:
        problems += codec_problems(fmt.upper(), config)

    before = len(problems)
    validation_rate = _rate(body, "validation_rate", problems)
    test_rate = _rate(body, "test_rate", problems)
    if len(problems) == before and validation_rate + test_rate >= 1:
        problems.append(
            f"validation_rate + test_rate = {validation_rate + test_rate:g} leaves "
            "nothing to train on (must be < 1)"
        )

    total = body.get("total_msg")
    if total is not None:
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            problems.append(f"total_msg: {total!r} must be a non-negative integer")
        elif incremental is True:
            problems.append("total_msg: must be null when incremental (the stream has no end)")
        elif ranges and total != sum(r.count for r in ranges):
            problems.append(
                f"total_msg: {total} does not match the "
                f"{sum(r.count for r in ranges)} offsets named by topic"
            )

    description = body.get("description") or ""
    if not isinstance(description, str):
        problems.append("description: must be a string")
    unsupervised = body.get("unsupervised_topic")
    if unsupervised is not None and not isinstance(unsupervised, str):
        problems.append("unsupervised_topic: must be a string or null")
    restrictions = body.get("dataset_restrictions", {})
    if restrictions is None:
        restrictions = {}
    if not isinstance(restrictions, (dict, str)):
        problems.append("dataset_restrictions: must be an object or a string")

    if problems:
        raise InvalidControlMessage(
            f"invalid control message: {len(problems)} problem(s): {'; '.join(problems)}",
            problems,
        )
    if online is not None:
        return ControlMessage(
            deployment_id=deployment_id or "",
            topic=topic,
            input_format=fmt.upper(),
            input_config=config,
            validation_rate=validation_rate,
            test_rate=test_rate,
            total_msg=None,
            description=description,
            unsupervised_topic=unsupervised,
            dataset_restrictions=restrictions,
            incremental=True,
            online=online,
        )
    return ControlMessage(
        deployment_id=deployment_id or "",
        topic=",".join(str(r) for r in ranges),
        input_format=fmt.upper(),
        input_config=config,
        validation_rate=validation_rate,
        test_rate=test_rate,
        total_msg=total if total is not None else sum(r.count for r in ranges),
        description=description,
        unsupervised_topic=unsupervised,
        dataset_restrictions=restrictions,
        incremental=False,
    )


def to_control_message_bytes(msg: ControlMessage) -> bytes:
    """The UTF-8 JSON value, as Kafka-ML's datasource library writes it (``json.dumps``)."""
    return json.dumps(msg.body()).encode("utf-8")


def control_message_key(deployment_id: str | int, kafka_ml_key: bool = False) -> bytes:
    """The record key: the UTF-8 id, or Kafka-ML's single byte (ids 0..255) when asked."""
    if kafka_ml_key:
        number = int(deployment_id)
        if not 0 <= number <= 255:
            raise ValueError(f"a Kafka-ML one-byte key holds ids 0..255, not {deployment_id}")
        return bytes([number])
    return str(deployment_id).encode("utf-8")
