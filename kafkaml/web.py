"""The one shape of every function's Flask app: settings, JSON logs, health, errors, dispatch.

A function is built by :func:`function_app` from a :class:`Function`: the CloudEvent types it
answers (``POST /`` dispatches on the type; any other type is one 400 naming the accepted
ones), a readiness check, what it closes on stop, and its extra routes as blueprints. Every
``KmlError`` becomes its JSON body ``{"error", "kind", "status", ...}`` with its status.

Access is checked here, once, for every function (``kafkaml.auth``): each request but the
probes and ``/metrics`` carries a bearer token (401 without one the function knows); a route
needs the scope its ``requires`` mark names (``read`` for a GET, ``write`` otherwise, when
unmarked) and ``POST /`` the scope of its CloudEvent type (403 otherwise); the data plane
(scope ``deliver``) may post every type.
"""

from __future__ import annotations

import atexit
import json
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Flask, Response, redirect, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from kafkaml import login
from kafkaml.auth import (
    COOKIE,
    DELIVER,
    OPEN,
    SCOPES,
    WRITE,
    Access,
    Principal,
    bearer,
    requires,
    scopes_of,
)
from kafkaml.errors import InvalidEvent, KmlError, PayloadTooLarge, Unauthorized, Unavailable
from kafkaml.events import KAFKA_EVENT, Event, parse_http, to_http
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


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is logged (test runners swap it, and
    the last lines come at exit, after they have closed theirs)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonLogFormatter) for h in root.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(JsonLogFormatter())
    root.handlers[:] = [handler]
    root.setLevel(level)


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, default=str), status=status, mimetype="application/json")


def event_response(event: Event, status: int = 200) -> Response:
    """A CloudEvent answer in binary mode (KafkaSource discards it; HTTP callers read it)."""
    headers, body = to_http(event)
    return Response(body, status=status, headers=headers)


def too_large(limit: int, setting: str, length: int | None = None) -> PayloadTooLarge:
    """The one 413: the limit and the setting that moves it."""
    size = f"body of {length} bytes" if length is not None else "body"
    return PayloadTooLarge(
        f"{size} exceeds the limit of {limit} bytes (KML_{setting.upper()})",
        limit=limit,
        setting=f"KML_{setting.upper()}",
    )


def received_event(settings: Settings, limit: int = 0, setting: str = "max_body_bytes") -> Event:
    """The CloudEvent of the current request, bounded by ``limit`` (default: the settings')."""
    limit = limit or settings.max_body_bytes
    length = request.content_length
    if length is not None and length > limit:
        raise too_large(limit, setting, length)
    body = request.get_data(cache=True)
    if len(body) > limit:
        raise too_large(limit, setting)
    return parse_http(dict(request.headers), body)


EventHandler = Callable[[Event], Response]
"""Answers one received CloudEvent of a type the function takes."""


def _nothing() -> None:
    return None


def unknown_event_type(function: str, event_type: str, accepted: Iterable[str]) -> InvalidEvent:
    """The one error for a CloudEvent type a function does not take (400, never retried)."""
    names = list(accepted)
    takes = f"{', '.join(names)} events" if names else "no CloudEvents"
    return InvalidEvent(
        f"the {function} function takes {takes}, not {event_type!r}",
        ce_type=event_type,
        accepted=names,
    )


@dataclass(eq=False)
class Function:
    """One function's parts: what it answers, how it checks itself, what it closes."""

    name: str
    """Short name (``register``, ``train``, ``infer``): the app's name and in messages."""
    events: Mapping[str, EventHandler]
    """CloudEvent type -> handler of ``POST /``."""
    ready: Callable[[], None]
    """Raises (503 ``Unavailable``) while the function cannot serve: the readiness probe."""
    close: Callable[[], None] = _nothing
    """Releases what the function opened: producers flushed and closed, pools, threads."""
    alive: Callable[[], None] = _nothing
    """Raises when the process is broken and must be restarted: the liveness probe."""
    blueprints: Sequence[Blueprint] = ()
    """Routes besides ``POST /`` and the health probes."""
    event_scopes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """CloudEvent type -> the scopes a caller's token may hold to post it; unlisted types need
    ``write``, and ``dev.knative.kafka.event`` (what KafkaSource delivers) ``deliver``."""
    body_limit: tuple[int, str] = (0, "max_body_bytes")
    """Largest request body and the setting naming it (0: the settings' ``max_body_bytes``)."""
    browser_login: bool = False
    """People use it in a browser: ``/login`` turns a token into a session cookie."""
    _stopped: threading.Event = field(default_factory=threading.Event, repr=False)

    def handler(self, event_type: str) -> EventHandler:
        """The handler of ``event_type``; an unknown type is the one 400 naming the accepted."""
        try:
            return self.events[event_type]
        except KeyError:
            raise unknown_event_type(self.name, event_type, self.events) from None

    def scopes_for(self, event_type: str) -> tuple[str, ...]:
        """Who may post ``event_type``: its scopes, and always the data plane."""
        default = (DELIVER,) if event_type == KAFKA_EVENT else (WRITE,)
        return (*self.event_scopes.get(event_type, default), DELIVER)

    def check_alive(self) -> None:
        if self._stopped.is_set():
            raise Unavailable(f"the {self.name} function is stopping")
        self.alive()

    def check_ready(self) -> None:
        self.check_alive()
        self.ready()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def stop(self) -> None:
        """Close what the function opened, once; the probes answer 503 from now on."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        try:
            self.close()
        except Exception as e:  # stopping must finish; say what could not be closed
            log.warning(
                "function not stopped cleanly",
                extra={"fields": {"function": self.name, "reason": _reason(e)}},
            )
            return
        log.info("function stopped", extra={"fields": {"function": self.name}})


_RUNNING: weakref.WeakSet[Function] = weakref.WeakSet()


@atexit.register
def _stop_running() -> None:
    """A worker exiting (gunicorn's SIGTERM, the end of a test session) stops its functions."""
    for function in list(_RUNNING):
        function.stop()


def _reason(e: Exception) -> str:
    return e.message if isinstance(e, KmlError) else type(e).__name__


def function_app(settings: Settings | None, build: Callable[[Settings], Function]) -> Flask:
    """The Flask app of one function: settings read once (from ``KML_*`` unless given), JSON
    logs, the health probes, JSON errors, ``POST /`` dispatched on the CloudEvent type (when the
    function takes any), and the function's blueprints. The :class:`Function` is
    ``app.extensions["kml.function"]``."""
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)
    access = Access.from_settings(settings)
    function = build(settings)
    app = Flask(f"kml-{function.name}")
    app.extensions["kml.function"] = function
    app.extensions["kml.settings"] = settings
    app.extensions["kml.access"] = access
    install_common(app, settings, function)
    install_access(app, function, access)

    if function.events:

        @app.post("/")
        def _receive() -> Response:
            event = received_event(settings, *function.body_limit)
            handler = function.handler(event.type)
            caller(request).require(function.scopes_for(event.type), f"send {event.type} events")
            return handler(event)

    for blueprint in function.blueprints:
        app.register_blueprint(blueprint)
    _RUNNING.add(function)
    return app


def function_of(app: Flask) -> Function:
    """The :class:`Function` an app was built from (``function_of(app).stop()`` closes it)."""
    return app.extensions["kml.function"]


def caller(req) -> Principal:
    """Who sent the current request (set by the access check before any view runs)."""
    return req.environ["kml.caller"]


def install_access(app: Flask, function: Function, access: Access) -> None:
    """The access check of every request: who calls (401), and may they call this route (403).

    ``POST /`` checks the scope of its CloudEvent type once the event is parsed."""
    if not access.enabled:
        log.warning("access control is OFF: anyone may call", extra={"fields": {"auth": "off"}})
    elif not len(access.tokens) and access.data_plane == "token":
        log.warning(
            "no tokens: every call but the probes is refused",
            extra={"fields": {"tokens_file": access.tokens.path or None}},
        )
    if function.browser_login:
        app.register_blueprint(login.routes(access))

    @app.before_request
    def _check_access():
        view = app.view_functions.get(request.endpoint or "")
        needed = scopes_of(view, request.method) if view is not None else ()
        if OPEN in needed:
            return None
        if not access.enabled:
            request.environ["kml.caller"] = Principal("anyone", frozenset(SCOPES), True)
            return None
        token = bearer(request.headers.get("Authorization"))
        if token is None and function.browser_login:
            token = request.cookies.get(COOKIE) or None
        event_post = request.method == "POST" and request.path == "/"
        try:
            principal = access.authenticate(token, event_post)
        except Unauthorized:
            if function.browser_login and login.wants_page(request):
                return redirect(login.login_path(request.full_path), code=303)
            raise
        request.environ["kml.caller"] = principal
        if needed and not event_post:
            principal.require(needed, f"{request.method} {request.path}")
        return None


def install_common(app: Flask, settings: Settings, function: Function) -> None:
    """JSON errors for everything, the health probes (open to anyone), and a request log line."""
    limit, setting = function.body_limit
    limit = limit or settings.max_body_bytes
    app.config["MAX_CONTENT_LENGTH"] = limit

    @app.errorhandler(KmlError)
    def _kml_error(e: KmlError):
        level = logging.WARNING if e.status < 500 else logging.ERROR
        log.log(level, e.message, extra={"fields": {"status": e.status, "kind": e.kind}})
        response = json_response(e.to_dict(), e.status)
        if e.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="kml"'
        return response

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(e):
        return json_response(too_large(limit, setting).to_dict(), 413)

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
    @requires(OPEN)
    def _liveness():
        function.check_alive()
        return json_response({"status": "alive"})

    @app.get("/health/readiness")
    @requires(OPEN)
    def _readiness():
        function.check_ready()
        return json_response({"status": "ready"})

    @app.before_request
    def _start_timer():
        request.environ["kml.start"] = time.perf_counter()

    requests_log = RequestLog(function.name)
    app.extensions["kml.request_log"] = requests_log

    @app.after_request
    def _log_request(response: Response):
        if not request.path.startswith("/health"):
            took = time.perf_counter() - request.environ.get("kml.start", time.perf_counter())
            requests_log.log(
                request.method,
                request.path,
                response.status_code,
                took,
                request.headers.get("ce-type"),
                request.headers.get("ce-id"),
            )
        return response


class RequestLog:
    """The request log line, sampled: every failed request (4xx/5xx) and one successful
    request in ``every`` (the first included, with ``sampled`` saying how many it stands for);
    all of them at DEBUG. A line per record cost more CPU than the record's prediction."""

    def __init__(self, function: str, every: int = 1000) -> None:
        self.function, self.every = function, every
        self._count = 0

    def log(
        self,
        method: str,
        path: str,
        status: int,
        took_s: float,
        ce_type: str | None = None,
        ce_id: str | None = None,
    ) -> None:
        self._count += 1
        if status < 400 and (self._count - 1) % self.every and not log.isEnabledFor(logging.DEBUG):
            return
        fields = {
            "function": self.function,
            "method": method,
            "path": path,
            "status": status,
            "ce_type": ce_type,
            "ce_id": ce_id,
            "ms": round(took_s * 1000, 1),
        }
        if status < 400 and not log.isEnabledFor(logging.DEBUG):
            fields["sampled"] = self.every
        log.info("request", extra={"fields": fields})
