"""Run records (``runs/<run-id>/status.json``) and online stream records (``streams/<id>.json``).

A run moves claimed -> running -> succeeded | failed (``storage.records.check_transition``);
every change is a conditional write on the record's ETag (``If-Match``), so two attempts of one
run can never both win: the one that lost gets ``PreconditionFailed`` (409) and knows it.
"""

from __future__ import annotations

from typing import Any

from kafkaml.errors import Conflict, NotFound
from storage.base import StoreBacked
from storage.objects import PreconditionFailed
from storage.records import (
    CLAIMED,
    FAILED,
    check_name,
    check_schema_version,
    check_transition,
    now_iso,
    stamped,
)


class RunRecords(StoreBacked):
    """Training runs and online streams."""

    def claim_run(self, run_id: str, record: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create the run as ``claimed``; ``(existing, False)`` when it already exists."""
        check_name("run id", run_id)
        now = now_iso()
        out = stamped(record, run_id=run_id, status=CLAIMED, created=now, updated=now)
        out.setdefault("permanent", False)
        try:
            self._store.put_json(self._run_key(run_id), out, if_none_match=True)
            return out, True
        except PreconditionFailed:
            return self.get_run(run_id)[0], False

    def get_run(self, run_id: str) -> tuple[dict[str, Any], str]:
        check_name("run id", run_id)
        key = self._run_key(run_id)
        try:
            value, etag = self._store.get_json(key)
        except NotFound:
            raise NotFound(f"no run {run_id!r}", run_id=run_id) from None
        record = check_schema_version(key, value)
        if isinstance(record, dict):
            record.setdefault("run_id", run_id)  # a record written without it still names its run
        return record, etag

    def update_run(self, run_id: str, etag: str, **changes: Any) -> tuple[dict[str, Any], str]:
        """Apply ``changes`` if the run is still at ``etag`` and the status change is legal."""
        current, current_etag = self.get_run(run_id)
        if current_etag != etag:
            raise PreconditionFailed(f"run {run_id} changed since it was read", key=run_id)
        if "status" in changes:
            check_transition(run_id, current, changes["status"])
        elif current.get("status") in ("succeeded", "failed"):
            raise Conflict(f"run {run_id} is {current['status']} and cannot change", run_id=run_id)
        changes.pop("run_id", None)
        new = {**current, **changes, "updated": now_iso()}
        new_etag = self._store.put_json(self._run_key(run_id), new, if_match=etag)
        return new, new_etag

    def reopen_run(self, run_id: str, requested_by: str) -> dict[str, Any]:
        """Make a failed run retryable (``permanent`` false) so its next delivery trains it.

        The run must be failed (permanently or not); the change is conditional on the record
        not having changed since it was read. The reason it failed is kept in ``retries``.
        """
        current, etag = self.get_run(run_id)
        if current.get("status") != FAILED:
            raise Conflict(
                f"run {run_id} is {current.get('status')}: only a failed run can be retried",
                run_id=run_id,
                run_status=current.get("status"),
            )
        history = list(current.get("retries") or [])
        history.append(
            {
                "requested": now_iso(),
                "by": requested_by,
                "attempt": current.get("attempt", 1),
                "reason": current.get("reason"),
                "error_status": current.get("error_status"),
            }
        )
        new = {**current, "permanent": False, "retries": history, "updated": now_iso()}
        try:
            self._store.put_json(self._run_key(run_id), new, if_match=etag)
        except PreconditionFailed:
            raise Conflict(f"run {run_id} changed while reopening it; try again") from None
        return new

    def run_artifact_key(self, run_id: str, model_name: str, filename: str) -> str:
        check_name("run id", run_id)
        check_name("model", model_name)
        check_name("artifact", filename)
        return f"runs/{run_id}/{model_name}/{filename}"

    def list_runs(self) -> list[dict[str, Any]]:
        out = []
        for run_id in self._store.list_dirs("runs/"):
            try:
                out.append(self.get_run(run_id)[0])
            except NotFound:
                continue  # artifacts without a status (being written): not a run yet
        return out

    # -- online streams (``streams/<id>.json``; created once, then updated with If-Match) -----
    def create_stream(self, stream_id: str, record: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create the stream record; ``(existing, False)`` when it already exists."""
        check_name("stream id", stream_id)
        now = now_iso()
        out = stamped(record, id=stream_id, created=now, updated=now)
        try:
            self._store.put_json(f"streams/{stream_id}.json", out, if_none_match=True)
            return out, True
        except PreconditionFailed:
            return self.get_stream(stream_id)[0], False

    def get_stream(self, stream_id: str) -> tuple[dict[str, Any], str]:
        check_name("stream id", stream_id)
        key = f"streams/{stream_id}.json"
        try:
            value, etag = self._store.get_json(key)
        except NotFound:
            raise NotFound(f"no stream {stream_id!r}", stream_id=stream_id) from None
        return check_schema_version(key, value), etag

    def update_stream(
        self, stream_id: str, etag: str, **changes: Any
    ) -> tuple[dict[str, Any], str]:
        """Apply ``changes`` if the stream is still at ``etag``; else ``PreconditionFailed``."""
        current, _ = self.get_stream(stream_id)
        changes.pop("id", None)
        new = {**current, **changes, "updated": now_iso()}
        return new, self._store.put_json(f"streams/{stream_id}.json", new, if_match=etag)

    def list_streams(self) -> list[dict[str, Any]]:
        """Every stream record, each with its ``id`` (from its key when the record lacks one);
        an object under ``streams/`` that is not one (no topic: left there by another tool or
        by hand) is skipped, not failed on."""
        return [
            {**record, "id": record["id"] if isinstance(record.get("id"), str) else name}
            for name, record in self._read_named("streams/")
            if isinstance(record, dict) and isinstance(record.get("topic"), str)
        ]

    @staticmethod
    def stream_plot_key(stream_id: str) -> str:
        """A stream's ``stream.png`` (train draws it per window; beside, not among, the records)."""
        return f"streams/{check_name('stream id', stream_id)}/stream.png"

    @staticmethod
    def _run_key(run_id: str) -> str:
        return f"runs/{run_id}/status.json"
