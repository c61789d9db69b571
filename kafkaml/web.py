"""What every function's Flask app shares: JSON errors, CloudEvent replies, health, JSON logs."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from kafkaml.errors import KmlError, PayloadTooLarge
from kafkaml.events import Event, parse_http, to_http
from kafkaml.settings import Settings

log = logging.getLogger("kml")


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line; fields passed as ``extra={"fields": {...}}`` are merged in."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonLogFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root.handlers[:] = [handler]
    root.setLevel(level)


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, default=str), status=status, mimetype="application/json")


def event_response(event: Event, status: int = 200) -> Response:
    """A CloudEvent answer in binary mode (KafkaSource discards it; HTTP callers read it)."""
    headers, body = to_http(event)
    return Response(body, status=status, headers=headers)


def received_event(settings: Settings) -> Event:
    """The CloudEvent of the current request, size-bounded."""
    length = request.content_length
    if length is not None and length > settings.max_body_bytes:
        raise PayloadTooLarge(
            f"body of {length} bytes exceeds the limit of {settings.max_body_bytes}"
        )
    body = request.get_data(cache=True)
    if len(body) > settings.max_body_bytes:
        raise PayloadTooLarge(f"body exceeds the limit of {settings.max_body_bytes} bytes")
    return parse_http(dict(request.headers), body)


def install_common(app: Flask, settings: Settings, ready: Callable[[], None]) -> None:
    """JSON errors for everything, health endpoints, and a request log line."""
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes

    @app.errorhandler(KmlError)
    def _kml_error(e: KmlError):
        level = logging.WARNING if e.status < 500 else logging.ERROR
        log.log(level, e.message, extra={"fields": {"status": e.status, "kind": e.kind}})
        return json_response(e.to_dict(), e.status)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(e):
        err = PayloadTooLarge(f"body exceeds the limit of {settings.max_body_bytes} bytes")
        return json_response(err.to_dict(), 413)

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException):
        return json_response(
            {"error": e.description, "kind": e.name.lower().replace(" ", "_"), "status": e.code},
            e.code or 500,
        )

    @app.errorhandler(Exception)
    def _unexpected(e: Exception):
        log.exception("unexpected error", extra={"fields": {"path": request.path}})
        return json_response(
            {"error": f"internal error: {type(e).__name__}", "kind": "internal", "status": 500}, 500
        )

    @app.get("/health/liveness")
    def _liveness():
        return json_response({"status": "alive"})

    @app.get("/health/readiness")
    def _readiness():
        ready()
        return json_response({"status": "ready"})

    @app.before_request
    def _start_timer():
        request.environ["kml.start"] = time.perf_counter()

    @app.after_request
    def _log_request(response: Response):
        if not request.path.startswith("/health"):
            took = time.perf_counter() - request.environ.get("kml.start", time.perf_counter())
            log.info(
                "request",
                extra={
                    "fields": {
                        "method": request.method,
                        "path": request.path,
                        "status": response.status_code,
                        "ce_type": request.headers.get("ce-type"),
                        "ce_id": request.headers.get("ce-id"),
                        "ms": round(took * 1000, 1),
                    }
                },
            )
        return response
