"""The infer function's server: a gunicorn worker running one asyncio event loop (uvloop's when
it is installed, as in the infer image: its transports and callbacks are C).

Knative's KafkaSource posts one record per HTTP request (there is no batched delivery), so in
event mode a request's own cost is the throughput of a replica. Under gunicorn's ``gthread``
worker a record cost ~0.8 ms of CPU (HTTP parsing in Python, the WSGI environ, Flask's request
context and hooks, the CloudEvents SDK, a log line) and each of the request threads waited for
its own Kafka acknowledgement, so the micro-batcher saw batches of 2 rows.

Here the two prediction routes are served on the loop, each request a small constant:

- ``POST /`` with a binary-mode ``dev.knative.kafka.event`` (what the dispatcher sends): the
  ``ce-*`` headers are read directly (:func:`functions.infer.kafka_path.binary_record`), every
  request whose bytes arrived in one turn of the loop joins one model call (:class:`LoopBatch`,
  in front of the micro-batcher, off the loop), the prediction is produced with
  ``send_async`` and the answer written when Kafka acknowledged it: no thread waits per record.
- ``POST /v1/models/<name>:predict`` (KServe V1), the same way.

Everything else (the probes, ``/metrics``, metadata, other CloudEvents, structured mode) is the
Flask app, called in a thread pool of ``--threads`` threads, so the control routes keep Flask and
the probes answer while every prediction waits on Kafka. The checks are the app's: the same
tokens and scopes (401/403), body limit (413), prediction slots (503), JSON errors, metrics,
sampled request log and readiness.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import numpy as np
from gunicorn.workers.base import Worker

from functions.infer.batcher import Outputs, run_model
from functions.infer.http_path import instances_batch, predictions_answer
from functions.infer.kafka_path import binary_record, handle_kafka_event_async
from functions.infer.model import LITERT
from functions.infer.serving import InferenceService
from kafkaml.auth import DELIVER, PREDICT, bearer
from kafkaml.errors import BadRequest, KmlError, NotFound, Unavailable
from kafkaml.events import KAFKA_EVENT, STRUCTURED_CONTENT_TYPE
from kafkaml.web import too_large

log = logging.getLogger("kml")

MAX_HEAD = 64 * 1024
"""Largest request line plus headers; more is a 431 and the connection closes."""
_PREDICT_RE = re.compile(r"^/v1/models/([^/]+):predict$")
_REASONS = {s.value: s.phrase for s in HTTPStatus}


def parse_head(head: str) -> tuple[str, str, str, dict[str, str]]:
    """Method, target, version and headers (names lowercased, values without the surrounding
    blanks, repeated fields joined with ``, ``) of a request head; ValueError when malformed
    (a line without a colon: obsolete line folding is not taken)."""
    request_line, *lines = head.split("\r\n")
    method, target, version = request_line.split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name[0] in " \t":
            raise ValueError(f"malformed header line {line[:40]!r}")
        name, value = name.rstrip().lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return method, target, version, headers


class Answer:
    """An HTTP answer: status, headers (without Content-Length) and body."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


def json_answer(body: Any, status: int = 200) -> Answer:
    return Answer(status, [("Content-Type", "application/json")], json.dumps(body).encode())


def error_answer(e: KmlError) -> Answer:
    """The JSON error the Flask app answers (``kafkaml.web``), logged the same way."""
    level = logging.WARNING if e.status < 500 else logging.ERROR
    log.log(level, e.message, extra={"fields": {"status": e.status, "kind": e.kind}})
    answer = json_answer(e.to_dict(), e.status)
    if e.status == 401:
        answer.headers.append(("WWW-Authenticate", 'Bearer realm="kml"'))
    return answer


class LoopBatch:
    """Rows of the requests that arrived in one turn of the loop, predicted in one call.

    The first request of a turn schedules the flush for the next turn, so everything parsed
    meanwhile joins. A LiteRT model (microseconds a row) is called right on the loop: a hand-over
    to another thread and back costs more than the batch. Other models (Keras) run through the
    service's micro-batcher in a thread, so the loop never stalls on them; while ``calls`` are out,
    rows wait for one to come back, so under load the batch grows, not the number of calls.
    """

    def __init__(self, service: InferenceService, executor: ThreadPoolExecutor, calls: int = 2):
        self.service, self.executor, self.calls = service, executor, calls
        self._rows: list[np.ndarray] = []
        self._waiting: list[tuple[asyncio.Future, int]] = []
        self._count = 0  # rows in _rows
        self._scheduled = False
        self._out = 0

    def predict(self, x: np.ndarray) -> Awaitable[Outputs]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        rows = self._rows
        if rows and (x.shape[1:] != rows[0].shape[1:] or x.dtype != rows[0].dtype):
            self._flush_now(loop)  # rows of another shape go in a call of their own
        elif rows and self._count + len(x) > self.service.settings.infer_max_batch:
            self._flush_now(loop)
        self._rows.append(x)
        self._count += len(x)
        self._waiting.append((future, int(x.shape[0])))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush, loop)
        return future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        if self._rows:
            self._flush_now(loop)

    def _flush_now(self, loop: asyncio.AbstractEventLoop) -> None:
        model = self.service.loaded.model
        inline = model.runtime == LITERT
        if not inline and self._out >= self.calls:
            return  # the next call to come back flushes these rows
        rows, waiting = self._rows, self._waiting
        self._rows, self._waiting, self._count = [], [], 0
        x = rows[0] if len(rows) == 1 else np.concatenate(rows)
        if inline:
            try:
                outputs = run_model(model.predict, x)
            except KmlError as e:
                _hand_out(waiting, error=e)
                return
            self.service.metrics.observe_batch(len(x))
            _hand_out(waiting, outputs)
            return
        self._out += 1
        call = loop.run_in_executor(self.executor, self.service.predict, x)
        call.add_done_callback(lambda done: self._came_back(loop, done, waiting))

    def _came_back(self, loop, done: asyncio.Future, waiting: list) -> None:
        self._out -= 1
        if self._rows and not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush, loop)
        error = done.exception()
        if error is not None:
            _hand_out(waiting, error=error)
        else:
            _hand_out(waiting, done.result())


def _hand_out(
    waiting: list[tuple[asyncio.Future, int]],
    outputs: Outputs | None = None,
    error: BaseException | None = None,
) -> None:
    start = 0
    for future, rows in waiting:
        end = start + rows
        if not future.done():
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result([out[start:end] for out in outputs])
        start = end


class Lean:
    """The prediction routes served on the loop; ``None`` from :meth:`route` means Flask."""

    def __init__(self, app: Any, executor: ThreadPoolExecutor, model_calls: ThreadPoolExecutor):
        self.app = app
        self.service: InferenceService = app.extensions["kml.infer"]
        self.function = app.extensions["kml.function"]
        self.settings = app.extensions["kml.settings"]
        self.access = app.extensions["kml.access"]
        self.requests_log = app.extensions["kml.request_log"]
        self.metrics = self.service.metrics
        self.executor = executor
        self.batch = LoopBatch(self.service, model_calls)
        self.limit = self.function.body_limit[0] or self.settings.max_body_bytes
        self.limit_setting = self.function.body_limit[1]
        self.slots = self.settings.infer_request_slots
        self.in_flight = 0
        self.kafka_scopes = self.function.scopes_for(KAFKA_EVENT)

    def route(self, method: str, path: str, headers: dict[str, str]) -> Callable | None:
        if method != "POST":
            return None
        if path == "/":
            content_type = headers.get("content-type", "")
            if headers.get("ce-type") == KAFKA_EVENT and not content_type.startswith(
                STRUCTURED_CONTENT_TYPE
            ):
                return self.kafka_event
            return None
        match = _PREDICT_RE.match(path)
        if match:
            return lambda headers, body: self.kserve_predict(match.group(1), headers, body)
        return None

    def too_long(self, length: int) -> Answer | None:
        if length > self.limit:
            return error_answer(too_large(self.limit, self.limit_setting, length))
        return None

    async def kafka_event(self, headers: dict[str, str], body: bytes) -> Answer:
        return await self._observed(
            "kafka", headers, (*self.kafka_scopes,), True, lambda: self._kafka(headers, body)
        )

    async def _kafka(self, headers: dict[str, str], body: bytes) -> tuple[Answer, str | None]:
        service = self.service
        record = binary_record(headers, body, service.spec.get("input_topic", ""))
        out = await handle_kafka_event_async(service, record, self.batch.predict, self._send)
        return json_answer(out), out["kind"] if out.get("dead_lettered") else None

    async def kserve_predict(self, name: str, headers: dict[str, str], body: bytes) -> Answer:
        async def answer() -> tuple[Answer, None]:
            service = self.service
            if not service.serves(name):
                raise NotFound(f"this service serves {service.spec['id']!r}, not {name!r}")
            try:
                parsed = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                raise BadRequest('the body must be JSON: {"instances": [...]}') from None
            outputs = await self.batch.predict(instances_batch(service, parsed))
            return json_answer(predictions_answer(outputs)), None

        return await self._observed("kserve", headers, (PREDICT, DELIVER), False, answer)

    async def _observed(
        self,
        path: str,
        headers: dict[str, str],
        scopes: tuple[str, ...],
        event_post: bool,
        handler: Callable[[], Awaitable[tuple[Answer, str | None]]],
    ) -> Answer:
        """The access check, a slot, the metrics and the error answer of a prediction."""
        try:
            self._admit(headers, scopes, event_post)
        except KmlError as e:
            return error_answer(e)  # refused before a slot: not counted, as in the Flask app
        started = time.perf_counter()
        status, kind = 500, "internal"
        slot = False
        try:
            if self.in_flight >= self.slots:
                raise Unavailable(
                    f"all {self.slots} prediction slots are busy (Kafka or the model is slow); "
                    "retry later",
                    slots=self.slots,
                )
            self.in_flight += 1
            slot = True
            self.service.ready()
            answer, kind = await handler()
            status = answer.status
            return answer
        except KmlError as e:
            status, kind = e.status, e.kind
            return error_answer(e)
        except Exception as e:  # as the Flask app: a 500 naming the kind, never the traceback
            log.exception("unexpected error", extra={"fields": {"path": path}})
            return json_answer(
                {"error": f"internal error: {type(e).__name__}", "kind": "internal", "status": 500},
                500,
            )
        finally:
            if slot:
                self.in_flight -= 1
            self.metrics.observe_request(path, status, time.perf_counter() - started, kind)

    def _admit(self, headers: dict[str, str], scopes: tuple[str, ...], event_post: bool) -> None:
        access = self.access
        if not access.enabled:
            return
        principal = access.authenticate(bearer(headers.get("authorization")), event_post)
        if principal.scopes.isdisjoint(scopes):  # else allowed: the common case, one C call
            what = f"send {KAFKA_EVENT} events" if event_post else "POST a prediction"
            principal.require(scopes, what)

    async def _send(self, topic: str, value: bytes, key: bytes | None, headers: list) -> Any:
        producer = self.service.producer()
        send_async = getattr(producer, "send_async", None)
        if send_async is not None:
            return await send_async(topic, value, key, headers)
        loop = asyncio.get_running_loop()  # a producer without it (tests): a thread waits
        return await loop.run_in_executor(self.executor, producer.send, topic, value, key, headers)


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: requests answered in order, one at a time."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False
        self.closed = False
        self.continued = False
        self.peer = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = peer[:2]
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        """Start the next complete request in the buffer, if any."""
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD:
                self._fail(431, "request headers too large")
            return
        try:
            method, target, version, headers = parse_head(buffer[:end].decode("latin-1"))
            length = int(headers.get("content-length", "0"))
        except ValueError:
            self._fail(400, "malformed request")
            return
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._fail(411, "send the body with a Content-Length (chunked bodies are not taken)")
            return
        lean = self.server.lean
        if lean is not None:
            refused = lean.too_long(length)
            if refused is not None:
                self.busy = True
                self._write(refused, keep_alive=False)
                return
        if len(buffer) - end - 4 < length:
            if headers.get("expect", "").lower() == "100-continue" and not self.continued:
                self.continued = True
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        self.continued = False
        body = bytes(buffer[end + 4 : end + 4 + length])
        del buffer[: end + 4 + length]
        path, _, query = target.partition("?")
        keep_alive = (
            headers.get("connection", "").lower() != "close"
            if version == "HTTP/1.1"
            else headers.get("connection", "").lower() == "keep-alive"
        )
        self.busy = True
        self.server.spawn(self._serve(method, path, query, version, headers, body, keep_alive))

    async def _serve(self, method, path, query, version, headers, body, keep_alive) -> None:
        started = time.perf_counter()
        lean = self.server.lean
        route = lean.route(method, path, headers) if lean is not None else None
        try:
            if route is not None:
                answer = await route(headers, body)
                lean.requests_log.log(
                    method,
                    path,
                    answer.status,
                    time.perf_counter() - started,
                    headers.get("ce-type"),
                    headers.get("ce-id"),
                )
            else:
                answer = await self.server.wsgi(
                    method, path, query, version, headers, body, self.peer
                )
        except Exception:  # the server itself failed: answer and close rather than hang
            log.exception("request failed", extra={"fields": {"path": path}})
            answer, keep_alive = json_answer({"error": "internal error", "status": 500}, 500), False
        self._write(answer, keep_alive and self.server.alive)

    def _write(self, answer: Answer, keep_alive: bool) -> None:
        if self.closed or self.transport is None:
            return
        head = [f"HTTP/1.1 {answer.status} {_REASONS.get(answer.status, '')}"]
        for name, value in answer.headers:
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                head.append(f"{name}: {value}")
        head.append(f"Content-Length: {len(answer.body)}")
        if not keep_alive:
            head.append("Connection: close")
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + answer.body)
        self.busy = False
        if not keep_alive:
            self.transport.close()
            self.closed = True
        elif self.buffer:
            self._next()

    def _fail(self, status: int, message: str) -> None:
        self.busy = True
        self._write(json_answer({"error": message, "status": status}, status), keep_alive=False)


class Server:
    """The loop's side of the worker: connections, the lean routes, the Flask app in threads."""

    def __init__(self, app: Any, threads: int, host: str = "", port: int = 0) -> None:
        self.app = app
        self.host, self.port = host, port
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kml-wsgi")
        self.model_calls = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kml-predict")
        self.lean = Lean(app, self.executor, self.model_calls) if _lean_app(app) else None
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Task] = set()
        self.alive = True

    def spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def wsgi(self, method, path, query, version, headers, body, peer) -> Answer:
        loop = asyncio.get_running_loop()
        environ = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(path, "latin-1"),
            "RAW_URI": f"{path}?{query}" if query else path,
            "QUERY_STRING": query,
            "SERVER_NAME": self.host or "localhost",
            "SERVER_PORT": str(self.port),
            "SERVER_PROTOCOL": version,
            "REMOTE_ADDR": peer[0],
            "REMOTE_PORT": str(peer[1]),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "CONTENT_LENGTH": str(len(body)),
        }
        for name, value in headers.items():
            if name == "content-type":
                environ["CONTENT_TYPE"] = value
            elif name != "content-length":
                environ["HTTP_" + name.upper().replace("-", "_")] = value
        return await loop.run_in_executor(self.executor, _call_wsgi, self.app, environ)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.model_calls.shutdown(wait=False, cancel_futures=True)


def _lean_app(app: Any) -> bool:
    return all(k in app.extensions for k in ("kml.infer", "kml.access", "kml.request_log"))


def _call_wsgi(app: Any, environ: dict) -> Answer:
    started: list = []

    def start_response(status: str, headers: list, exc_info: Any = None) -> Callable:
        started[:] = [status, headers]
        return lambda data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    status, headers = started
    return Answer(int(status.split(" ", 1)[0]), list(headers), body)


class EventLoopWorker(Worker):
    """``gunicorn --worker-class functions.infer.worker.EventLoopWorker``: the loop serves the
    listening sockets; ``--threads`` threads run the Flask routes; SIGTERM stops accepting,
    lets the requests in flight finish (``--graceful-timeout``) and closes the function."""

    def run(self) -> None:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(self._serve())

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = _bound(self.sockets)
        server = Server(self.wsgi, max(1, self.cfg.threads), host, port)
        listeners = [
            await loop.create_server(lambda: Connection(server), sock=sock.sock, backlog=2048)
            for sock in self.sockets
        ]
        ppid = os.getppid()
        while self.alive:
            self.notify()
            if os.getppid() != ppid:
                break
            await asyncio.sleep(0.5)
        server.alive = False
        for listener in listeners:
            listener.close()
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while server.tasks and time.monotonic() < deadline:
            self.notify()
            await asyncio.sleep(0.05)
        for connection in list(server.connections):
            if connection.transport is not None:
                connection.transport.close()
        server.close()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed (the infer image has it: its transports and
    callbacks are C, about half of the loop's own cost per request), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _bound(sockets: list) -> tuple[str, int]:
    try:
        host, port = sockets[0].sock.getsockname()[:2]
        return str(host), int(port)
    except (IndexError, OSError, ValueError):
        return "", 0
