"""Following an online stream: which model version the stream has promoted, checked cheaply.

An inference deployment whose spec names a ``stream`` serves the stream's promoted model and
moves to the next one on its own. Train moves the pointer (``promoted`` in
``streams/<id>.json``) with a conditional write when a window promotes; here the infer process
reads that record with a conditional GET every ``infer_follow_s`` seconds (``If-None-Match``
with the last ETag: 304 and no body while nothing changed), so a promotion is seen within that
bound without listening to Kafka. Nothing here loads a model: :class:`StreamFollow` says what
changed and loads a version when asked; ``functions.infer.serving`` decides when to swap.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from functions.infer.model import Model
from kafkaml.errors import Unavailable
from storage.objects import StoredObject


class NotPromotedYet(Unavailable):
    """The stream followed has promoted no model yet: not ready (503), checked again every
    ``infer_follow_s`` until its first promotion, then served without a restart."""

    kind = "stream_not_promoted"


@dataclass(frozen=True)
class Pointer:
    """A stream's promoted model: its registry version (the label every prediction carries)
    and the window run whose artifacts hold it."""

    stream_id: str
    version: str
    """``<model>-<stream>@N``, the model version the promotion registered."""
    run_id: str


def pointer_of(stream: dict[str, Any]) -> Pointer | None:
    """The promoted pointer of a stream record; None while nothing has been promoted."""
    promoted = stream.get("promoted") or None
    if not promoted or not promoted.get("model") or not promoted.get("run_id"):
        return None
    return Pointer(str(stream["id"]), str(promoted["model"]), str(promoted["run_id"]))


def stream_key(stream_id: str) -> str:
    """Where train keeps the stream record (``storage.runs.RunRecords.get_stream``)."""
    return f"streams/{stream_id}.json"


def versioned_spec(spec: dict[str, Any], pointer: Pointer) -> dict[str, Any]:
    """The deployment's spec as it serves ``pointer``: the run whose model it loads and the
    version it labels predictions with (the deployment's id, topics and input stay)."""
    return {**spec, "run_id": pointer.run_id, "model_version": pointer.version}


def version_label(spec: dict[str, Any]) -> str:
    """The version a spec's predictions carry: the promoted model version when it follows a
    stream, else the run id it pins (a run's artifacts never change)."""
    return str(spec.get("model_version") or spec["run_id"])


class Reader(Protocol):
    def get_if_changed(self, key: str, etag: str) -> StoredObject | None: ...


class StreamFollow:
    """The pointer check of one stream, and how to load the version it points at."""

    def __init__(
        self,
        stream_id: str,
        reader: Reader,
        load: Callable[[Pointer], Model],
        etag: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream_id = stream_id
        self._reader, self._load, self._etag, self._clock = reader, load, etag, clock
        self.checked_at: float | None = None
        """``clock()`` of the last check that storage answered."""

    def check(self) -> Pointer | None:
        """The stream's pointer when its record changed since the last check (the first check
        always reads it), else None; storage errors propagate (the caller retries later)."""
        obj = self._reader.get_if_changed(stream_key(self.stream_id), self._etag)
        self.checked_at = self._clock()
        if obj is None:
            return None
        self._etag = obj.etag
        return pointer_of(json.loads(obj.body))

    def forget(self) -> None:
        """Read the record in full at the next check (after a version failed to load, so the
        check returns its pointer again instead of 304)."""
        self._etag = ""

    def load(self, pointer: Pointer) -> Model:
        """The model ``pointer`` names, fetched and loaded (not yet serving)."""
        return self._load(pointer)


class Retries:
    """When a version that failed to load may be tried again: 1 s, 2 s, 4 s ... up to
    ``cap_s``, so a broken model is not downloaded every check yet a transient fault heals."""

    def __init__(self, cap_s: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.cap_s, self._clock = cap_s, clock
        self._failed: dict[str, tuple[float, float]] = {}

    def due(self, version: str) -> bool:
        entry = self._failed.get(version)
        return entry is None or self._clock() >= entry[0]

    def failed(self, version: str) -> float:
        """Record a failure; returns the seconds until the next attempt."""
        delay = min(self.cap_s, self._failed.get(version, (0.0, 0.5))[1] * 2)
        self._failed[version] = (self._clock() + delay, delay)
        return delay

    def succeeded(self, version: str) -> None:
        self._failed.pop(version, None)

    @property
    def failing(self) -> list[str]:
        return sorted(self._failed)
