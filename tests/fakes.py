"""In-memory stand-ins for the edges of the functions: the object store, the Kafka offset
reader and the results publisher. Unit tests of register and train run their real handler
code over these, without Kafka or MinIO; the stack tests keep the real ones honest."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from kafkaml.errors import KmlError, NotFound, Unavailable
from kafkaml.kafka import OffsetRangeUnavailable, RangeRecords
from kafkaml.settings import Settings
from kafkaml.wire import OffsetRange
from storage.objects import PreconditionFailed, StoredObject


class MemoryStore:
    """``storage.objects.ObjectStore`` over a dict: conditional creates (``if_none_match``),
    ``if_match`` ETag updates raising ``PreconditionFailed``, listing by prefix in key order.

    ``down = True`` makes every call raise ``Unavailable`` like an unreachable endpoint.
    """

    def __init__(self, bucket: str = "kml", endpoint: str = "memory://") -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        self.down = False
        self.objects: dict[str, StoredObject] = {}
        self.content_types: dict[str, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> MemoryStore:
        return cls(settings.bucket)

    def _reachable(self) -> None:
        if self.down:
            raise Unavailable(f"storage at {self.endpoint} does not answer: down")

    # -- bucket -------------------------------------------------------------------------------
    def ensure_bucket(self) -> None:
        self._reachable()

    def ping(self) -> None:
        self._reachable()

    # -- objects ------------------------------------------------------------------------------
    def put(
        self,
        key: str,
        body: bytes,
        *,
        content_type: str = "application/octet-stream",
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> str:
        """Write ``key``; a lost condition raises ``PreconditionFailed``, as S3 answers 412."""
        self._reachable()
        with self._lock:
            current = self.objects.get(key)
            if if_none_match and current is not None:
                raise PreconditionFailed(f"conditional write on {key!r} lost: 412", key=key)
            if if_match is not None:
                if current is None:  # S3 answers If-Match on a missing key with NoSuchKey
                    raise NotFound(f"no object {key!r}", key=key)
                if current.etag != if_match:
                    raise PreconditionFailed(f"conditional write on {key!r} lost: 412", key=key)
            etag = f'"{hashlib.md5(bytes(body)).hexdigest()}"'  # as S3 does for a plain put
            self.objects[key] = StoredObject(key, bytes(body), etag)
            self.content_types[key] = content_type
            return etag

    def put_json(self, key: str, value: Any, **conditions: Any) -> str:
        body = json.dumps(value, indent=1, sort_keys=True).encode()
        return self.put(key, body, content_type="application/json", **conditions)

    def get(self, key: str) -> StoredObject:
        self._reachable()
        with self._lock:
            if key not in self.objects:
                raise NotFound(f"no object {key!r}", key=key)
            return self.objects[key]

    def get_json(self, key: str) -> tuple[Any, str]:
        obj = self.get(key)
        return obj.json(), obj.etag

    def exists(self, key: str) -> bool:
        self._reachable()
        return key in self.objects

    def delete(self, key: str) -> None:
        self._reachable()
        with self._lock:
            self.objects.pop(key, None)  # S3 deletes a missing key without complaint
            self.content_types.pop(key, None)

    def list(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix``, in key order."""
        self._reachable()
        with self._lock:
            return sorted(k for k in self.objects if k.startswith(prefix))

    def list_dirs(self, prefix: str) -> list[str]:
        """The immediate 'folders' below ``prefix`` (which ends with '/')."""
        rests = (k[len(prefix) :] for k in self.list(prefix))
        return sorted({rest.split("/", 1)[0] for rest in rests if "/" in rest})

    def upload_file(self, key: str, fileobj: BinaryIO, *, part_size: int = 8 * 1024 * 1024) -> None:
        self.put(key, fileobj.read())

    def download_file(self, key: str, path: str) -> None:
        Path(path).write_bytes(self.get(key).body)

    def presigned_get(self, key: str, expires_s: int = 3600) -> str:
        return f"{self.endpoint}{self.bucket}/{key}?expires={expires_s}"


class MemoryTopics:
    """Kafka partitions as lists of ``(key, value)``; called like ``dataset.read_from_kafka``.

    Ranges outside a partition fail with ``OffsetRangeUnavailable`` naming each, as the real
    reader does; ``down = True`` is an unreachable broker (``Unavailable``).
    """

    def __init__(self) -> None:
        self.partitions: dict[tuple[str, int], list[tuple[bytes | None, bytes]]] = {}
        self.reads: list[list[str]] = []
        self.down = False

    def append(
        self, topic: str, records: Iterable[tuple[bytes | None, bytes]], partition: int = 0
    ) -> OffsetRange:
        """Add records to a partition; returns the offset range they occupy."""
        log = self.partitions.setdefault((topic, partition), [])
        start = len(log)
        log.extend(records)
        return OffsetRange(topic, partition, start, len(log))

    def __call__(self, settings: Settings, ranges: Sequence[OffsetRange]) -> RangeRecords:
        if self.down:
            raise Unavailable(f"Kafka at {settings.kafka_bootstrap} unreachable: down")
        self.reads.append([str(r) for r in ranges])
        problems, beyond = [], []
        for r in ranges:
            log = self.partitions.get((r.topic, r.partition))
            if log is None:
                problems.append(f"{r}: topic {r.topic!r} does not exist")
            elif r.end > len(log):
                problems.append(f"{r}: end {r.end} is beyond the high watermark {len(log)}")
                beyond.append(str(r))
        if problems:
            raise OffsetRangeUnavailable(
                f"offset ranges not available: {'; '.join(problems)}",
                problems,
                beyond_high_watermark=beyond,
            )
        out = RangeRecords()
        for r in ranges:
            chunk = self.partitions[(r.topic, r.partition)][r.start : r.end]
            out.keys += [k for k, _ in chunk]
            out.values += [v for _, v in chunk]
            out.counts[str(r)] = len(chunk)
        return out


@dataclass
class RecordingPublisher:
    """``functions.train.results.ResultsPublisher`` that keeps the events instead of sending."""

    events: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False

    def progress(
        self,
        run_id: str,
        deployment_id: str,
        model: str,
        epoch: int,
        epochs: int,
        metrics: dict[str, float],
    ) -> None:
        self.events.append(
            {"type": "progress", "run_id": run_id, "model": model, "epoch": epoch, "of": epochs}
        )

    def completed(self, run: dict[str, Any]) -> None:
        self.events.append({"type": "completed", "run_id": run["run_id"]})

    def failed(self, run_id: str, deployment_id: str, error: KmlError) -> None:
        self.events.append(
            {"type": "failed", "run_id": run_id, "status": error.status, "reason": error.message}
        )

    def close(self) -> None:
        self.closed = True

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]


def tiny_model_json(features: int = 4, hidden: int = 3, classes: int = 2) -> str:
    """A hand-written minimal Keras config (no Keras needed to write it): features -> hidden
    (relu) -> classes (softmax); with the defaults 23 parameters."""
    layers: list[dict[str, Any]] = [
        {
            "class_name": "InputLayer",
            "module": "keras.layers",
            "config": {"batch_shape": [None, features]},
        },
        {
            "class_name": "Dense",
            "module": "keras.layers",
            "config": {"units": hidden, "activation": "relu"},
        },
        {
            "class_name": "Dense",
            "module": "keras.layers",
            "config": {"units": classes, "activation": "softmax"},
        },
    ]
    return json.dumps(
        {
            "class_name": "Sequential",
            "module": "keras",
            "config": {"name": "tiny", "layers": layers},
        }
    )
