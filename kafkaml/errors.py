"""One error base carrying its HTTP status; the status decides retry (5xx) or dead-letter (4xx)."""

from __future__ import annotations

from typing import Any


class KmlError(Exception):
    """Base error: ``status`` is the HTTP status, ``details`` extra JSON-safe facts."""

    status = 500
    kind = "internal"

    def __init__(self, message: str, *, status: int | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message, "kind": self.kind, "status": self.status}
        body.update(self.details)
        return body

    @property
    def retryable(self) -> bool:
        return self.status >= 500


class BadRequest(KmlError):
    status, kind = 400, "bad_request"


class InvalidEvent(BadRequest):
    """A missing or unknown CloudEvent type, or an event that does not parse."""

    kind = "invalid_event"


class NotFound(KmlError):
    status, kind = 404, "not_found"


class Conflict(KmlError):
    status, kind = 409, "conflict"


class PayloadTooLarge(KmlError):
    status, kind = 413, "payload_too_large"


class ValidationFailed(KmlError):
    """Schema violations; ``problems`` lists every bad field at once."""

    status, kind = 422, "validation_failed"

    def __init__(self, message: str, problems: list[str] | None = None, **details: Any) -> None:
        super().__init__(message, problems=list(problems or []), **details)
        self.problems = list(problems or [])


class Unavailable(KmlError):
    """A transient fault (Kafka or storage unreachable): retried by KafkaSource."""

    status, kind = 503, "unavailable"
