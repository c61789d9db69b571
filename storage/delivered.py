"""Delivered CloudEvents (``events/<sha256(source, id)>.json``): claimed before they are handled.

KafkaSource delivers at least once and retries a delivery that outlived its timeout while the
first one may still be running. Register claims the event with a conditional create BEFORE it
handles it, so a concurrent duplicate finds the claim (and waits for the answer, or is told to
retry later) instead of creating a second record. States: ``pending`` (held until
``expires``), ``done`` (with ``answer``), ``released`` (the handling failed: handle it again).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

from kafkaml.errors import KmlError, NotFound
from storage.base import StoreBacked
from storage.objects import PreconditionFailed
from storage.records import check_schema_version, now_iso, stamped

EVENT_PENDING, EVENT_DONE, EVENT_RELEASED = "pending", "done", "released"
"""The states of an event record."""


def event_state(record: dict[str, Any]) -> str:
    """An event record's state; one written before there were claims holds its answer: done."""
    return str(record.get("state") or (EVENT_DONE if "answer" in record else EVENT_RELEASED))


class EventRecords(StoreBacked):
    """Claims and answers of delivered CloudEvents."""

    def find_event(self, source: str, event_id: str) -> dict[str, Any] | None:
        """The event record of the CloudEvent ``(source, id)`` (any state), or None."""
        try:
            return self._read(self._event_key(source, event_id))
        except NotFound:
            return None

    def claim_event(
        self, source: str, event_id: str, event_type: str, hold_s: float
    ) -> tuple[dict[str, Any], str | None]:
        """Claim ``(source, id)`` before handling it: ``(record, etag)``.

        ``etag`` is set when this caller holds the claim now (a conditional create, or an
        If-Match takeover of a released claim or of a pending one past its ``expires``): handle
        the event, then :meth:`finish_event` or :meth:`release_event`. ``etag`` is None when the
        event was answered (state ``done``, the answer in the record) or another delivery holds
        it (``pending``): wait, or answer "retry later".
        """
        key = self._event_key(source, event_id)
        claim = stamped(
            {
                "source": source,
                "id": event_id,
                "type": event_type,
                "state": EVENT_PENDING,
                "expires": time.time() + hold_s,
                "owner": uuid.uuid4().hex,
            }
        )
        try:
            return claim, self._store.put_json(key, claim, if_none_match=True)
        except PreconditionFailed:
            pass
        current, etag = self._store.get_json(key)
        current = check_schema_version(key, current)
        state = event_state(current)
        if state == EVENT_DONE or (
            state == EVENT_PENDING and float(current.get("expires", 0)) > time.time()
        ):
            return current, None
        taken = {**claim, "created": current.get("created", claim["created"])}
        taken["takeovers"] = int(current.get("takeovers", 0)) + 1
        try:
            return taken, self._store.put_json(key, taken, if_match=etag)
        except PreconditionFailed:  # another delivery took it over first
            return self._read(key), None

    def finish_event(self, source: str, event_id: str, etag: str, answer: dict[str, Any]) -> bool:
        """Record the answer of a claimed event (state ``done``); False if the claim was lost."""
        key = self._event_key(source, event_id)
        current, _ = self._store.get_json(key)
        done = {**current, "state": EVENT_DONE, "answer": answer, "answered": now_iso()}
        done.pop("expires", None)
        try:
            self._store.put_json(key, done, if_match=etag)
        except PreconditionFailed:
            return False
        return True

    def release_event(self, source: str, event_id: str, etag: str, reason: str) -> None:
        """Give a claim back after a failed handling, so a redelivery handles the event again."""
        key = self._event_key(source, event_id)
        try:
            current, _ = self._store.get_json(key)
            released = {**current, "state": EVENT_RELEASED, "reason": reason[:500]}
            self._store.put_json(key, released, if_match=etag)
        except (PreconditionFailed, KmlError):
            pass  # taken over, or storage down: the claim expires by itself

    @staticmethod
    def _event_key(source: str, event_id: str) -> str:
        digest = hashlib.sha256(f"{source}\n{event_id}".encode()).hexdigest()[:32]
        return f"events/{digest}.json"
