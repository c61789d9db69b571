"""Pure helpers for registry records: keys, names, model refs, timestamps, run transitions.

No I/O here; ``storage.registry`` uses these, and unit tests call them directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kafkaml.errors import Conflict, KmlError, ValidationFailed

SCHEMA_VERSION = 1
"""Written into every record as ``schema_version``; a reader refuses newer records."""

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
"""Model / configuration names and every id: safe as one S3 key segment, no '/' or '..'."""

# -- run state machine ------------------------------------------------------------------------
CLAIMED, RUNNING, SUCCEEDED, FAILED = "claimed", "running", "succeeded", "failed"
RUN_STATES = (CLAIMED, RUNNING, SUCCEEDED, FAILED)
TERMINAL = frozenset({SUCCEEDED, FAILED})
_TRANSITIONS: dict[str, frozenset[str]] = {
    CLAIMED: frozenset({CLAIMED, RUNNING, FAILED}),
    RUNNING: frozenset({RUNNING, SUCCEEDED, FAILED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset({CLAIMED, RUNNING}),  # only when the failure was not permanent
}


def now_iso() -> str:
    """UTC now, RFC 3339 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stamped(record: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A copy of ``record`` with ``fields``, ``schema_version`` and ``created`` (if unset)."""
    out = {**record, **fields, "schema_version": SCHEMA_VERSION}
    out.setdefault("created", now_iso())
    return out


def name_problem(field: str, value: Any) -> str | None:
    """Why ``value`` cannot be a name or id, or None when it can."""
    if not isinstance(value, str) or not NAME_RE.match(value) or ".." in value:
        return (
            f"{field}: {value!r} must be 1-100 characters of letters, digits, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return None


def check_name(field: str, value: Any) -> str:
    problem = name_problem(field, value)
    if problem:
        raise ValidationFailed(f"invalid {field}", [problem])
    return value


@dataclass(frozen=True)
class ModelRef:
    """``name`` (latest version) or ``name@version``."""

    name: str
    version: int | None = None

    @classmethod
    def parse(cls, ref: Any) -> ModelRef:
        if not isinstance(ref, str) or not ref:
            raise ValidationFailed("invalid model ref", [f"model ref {ref!r} must be a string"])
        name, sep, ver = ref.partition("@")
        check_name("model", name)
        if not sep:
            return cls(name)
        if not ver.isdigit() or int(ver) < 1:
            raise ValidationFailed(
                "invalid model ref", [f"model ref {ref!r}: version must be a positive integer"]
            )
        return cls(name, int(ver))

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


def check_transition(run_id: str, current: dict[str, Any], new_status: str) -> None:
    """Raise ``Conflict`` unless ``current['status'] -> new_status`` is legal."""
    if new_status not in RUN_STATES:
        raise ValidationFailed(
            "invalid run status", [f"status: {new_status!r} is not one of {', '.join(RUN_STATES)}"]
        )
    old = current.get("status")
    allowed = _TRANSITIONS.get(old, frozenset())
    if new_status not in allowed or (old == FAILED and current.get("permanent", True)):
        raise Conflict(
            f"run {run_id}: illegal status change {old} -> {new_status}",
            run_id=run_id,
            current=old,
            requested=new_status,
        )


def check_schema_version(key: str, record: Any) -> dict[str, Any]:
    """The record at ``key``, refusing one written by a newer schema."""
    if not isinstance(record, dict):
        raise KmlError(f"record {key!r} is not a JSON object", status=500)
    version = record.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise KmlError(
            f"record {key!r} has schema_version {version!r}; this build reads up to "
            f"{SCHEMA_VERSION}",
            status=500,
        )
    return record


def same_content(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal apart from bookkeeping fields (``created``, ``updated``, ``schema_version``)."""
    skip = {"created", "updated", "schema_version"}
    return {k: v for k, v in a.items() if k not in skip} == {
        k: v for k, v in b.items() if k not in skip
    }
