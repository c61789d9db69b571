"""One error base carrying its HTTP status, and the one rule that says which statuses are retried.

A function's answer to a KafkaSource delivery is its contract with the retry policy: Knative's
dispatcher retries 5xx, 404, 408, 409 and 429 (and timeouts) and dead-letters every other 4xx.
Everything in the project that decides "retry later or give up" (the HTTP routes, the run record,
the ``kml.training.failed`` event, the JobSink exit code, the inference Kafka path) asks
:func:`is_retried` and nothing else.
"""

from __future__ import annotations

from typing import Any

# Statuses below 500 that Knative's delivery retries (not found yet, timeout, conflict, busy).
RETRIED_4XX = frozenset({404, 408, 409, 429})
# Exit codes of the batch (JobSink) entry: the Job's restart policy retries EXIT_RETRY only.
EXIT_OK, EXIT_PERMANENT, EXIT_USAGE, EXIT_RETRY = 0, 1, 2, 75


def is_retried(status: int) -> bool:
    """True when a failure with this HTTP status is transient: retried, never dead-lettered."""
    return status >= 500 or status in RETRIED_4XX


def exit_code(status: int) -> int:
    """The batch entry's exit status for a failure with this HTTP status."""
    return EXIT_RETRY if is_retried(status) else EXIT_PERMANENT


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
        """Transient (see :func:`is_retried`): a redelivery may succeed."""
        return is_retried(self.status)


class BadRequest(KmlError):
    status, kind = 400, "bad_request"


class InvalidEvent(BadRequest):
    """A missing or unknown CloudEvent type, or an event that does not parse."""

    kind = "invalid_event"


class Unauthorized(KmlError):
    """No bearer token, or one no function knows (never retried: the caller must fix it)."""

    status, kind = 401, "unauthorized"


class Forbidden(KmlError):
    """A known token without the scope the route or the CloudEvent type needs."""

    status, kind = 403, "forbidden"


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
