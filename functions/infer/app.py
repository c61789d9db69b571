"""The infer function: one process serves one inference deployment (``settings.inference_id``).

Routes: ``POST /`` (CloudEvents: ``dev.knative.kafka.event`` from KafkaSource, or
``kml.inference.request``), ``POST /v1/models/<name>:predict`` (KServe V1),
``GET /v1/models/<name>``, ``GET /metrics`` and the health probes; readiness is 503 until the
model is loaded.

Prediction work (the Kafka path, the CloudEvent request, KServe's predict) holds one of
``infer_request_slots`` slots; a request finding every slot busy is answered 503 at once (the
KafkaSource retries it) instead of waiting for a thread. The process runs more threads than
slots (``kafkaml.manifests.PROBE_THREADS`` more), so with Kafka unreachable and every slot
blocked on it the health probes still answer at once and the pod is not restarted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from flask import Blueprint, Flask, Response, request

from functions.infer.http_path import model_metadata, predict_instances
from functions.infer.kafka_path import handle_kafka_event
from functions.infer.metrics import InferMetrics
from functions.infer.serving import InferenceService, Loader, load_from_storage
from kafkaml.auth import OPEN, PREDICT, READ, requires
from kafkaml.errors import BadRequest, KmlError, NotFound, Unavailable
from kafkaml.events import INFERENCE_REQUEST, INFERENCE_RESPONSE, KAFKA_EVENT, Event, new_event
from kafkaml.settings import Settings
from kafkaml.web import Function, event_response, function_app, json_response


def create_app(
    settings: Settings | None = None,
    *,
    loader: Loader = load_from_storage,
    producer_factory: Callable[[Settings], Any] | None = None,
) -> Flask:
    """The Flask app; the model starts loading in the background at once."""
    service: InferenceService | None = None

    def parts(s: Settings) -> Function:
        nonlocal service
        if not s.inference_id:
            raise ValueError("KML_INFERENCE_ID is not set: an infer process serves one deployment")
        metrics = InferMetrics(s.inference_id)
        service = InferenceService(s, metrics, loader=loader, producer_factory=producer_factory)
        return build(s, service)

    app = function_app(settings, parts)
    assert service is not None
    app.extensions["kml.infer"] = service
    service.start()
    return app


class RequestSlots:
    """At most ``count`` prediction requests at once; one more is a 503 at once, never a wait
    (a waiting request would hold a thread the probes need)."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"KML_INFER_REQUEST_SLOTS={count} must be at least 1")
        self.count = count
        self._free = threading.BoundedSemaphore(count)

    @contextmanager
    def held(self) -> Iterator[None]:
        if not self._free.acquire(blocking=False):
            raise Unavailable(
                f"all {self.count} prediction slots are busy (Kafka or the model is slow); "
                "retry later",
                slots=self.count,
            )
        try:
            yield
        finally:
            self._free.release()


def build(settings: Settings, service: InferenceService) -> Function:
    """Infer's parts: the Kafka and CloudEvent paths, KServe V1 and metrics, model readiness."""
    metrics = service.metrics
    slots = RequestSlots(settings.infer_request_slots)

    def observed(path: str, handler: Callable[[], tuple[Response, str | None]]) -> Response:
        """Answer in a slot; the request counted by path, status and (error) kind."""
        started = time.perf_counter()
        status, kind = 500, "internal"
        try:
            with slots.held():
                response, kind = handler()
            status = response.status_code
            return response
        except KmlError as e:
            status, kind = e.status, e.kind
            raise
        finally:
            metrics.observe_request(path, status, time.perf_counter() - started, kind)

    def kafka_event(event: Event) -> Response:
        def answer() -> tuple[Response, str | None]:
            out = handle_kafka_event(service, event)
            # A dead-lettered record is answered 2xx (handled) and counted by its error kind.
            return json_response(out), out["kind"] if out.get("dead_lettered") else None

        return observed("kafka", answer)

    def inference_request(event: Event) -> Response:
        def answer() -> tuple[Response, None]:
            out = predict_instances(service, event.json())
            reply = new_event(
                INFERENCE_RESPONSE, f"/kml/infer/{settings.inference_id}", out, subject=event.id
            )
            return event_response(reply), None

        return observed("event", answer)

    serving = Blueprint("serving", __name__)

    @serving.post("/v1/models/<name>:predict")
    @requires(PREDICT)
    def _kserve_predict(name: str) -> Response:
        def answer() -> tuple[Response, None]:
            _check_name(service, name)
            body = request.get_json(silent=True)
            if body is None:
                raise BadRequest('the body must be JSON: {"instances": [...]}')
            return json_response(predict_instances(service, body)), None

        return observed("kserve", answer)

    @serving.get("/v1/models/<name>")
    @requires(READ, PREDICT)
    def _kserve_metadata(name: str) -> Response:
        _check_name(service, name)
        return json_response(model_metadata(service))

    @serving.get("/metrics")
    @requires(OPEN)
    def _metrics() -> Response:
        return Response(metrics.render(), content_type=metrics.content_type)

    return Function(
        name="infer",
        events={KAFKA_EVENT: kafka_event, INFERENCE_REQUEST: inference_request},
        ready=service.ready,
        close=service.close,
        blueprints=[serving],
        event_scopes={INFERENCE_REQUEST: (PREDICT,)},
        body_limit=(settings.infer_max_body_bytes, "infer_max_body_bytes"),
    )


def _check_name(service: InferenceService, name: str) -> None:
    if not service.serves(name):
        raise NotFound(f"this service serves {service.spec['id']!r}, not {name!r}")
