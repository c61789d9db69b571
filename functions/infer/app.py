"""The infer function: one process serves one inference deployment (``settings.inference_id``).

Routes: ``POST /`` (CloudEvents: ``dev.knative.kafka.event`` from KafkaSource, or
``kml.inference.request``), ``POST /v1/models/<name>:predict`` (KServe V1),
``GET /v1/models/<name>``, ``GET /metrics`` and the health probes; readiness is 503 until the
model is loaded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, request

from functions.infer.http_path import model_metadata, predict_instances
from functions.infer.kafka_path import handle_kafka_event
from functions.infer.metrics import InferMetrics
from functions.infer.serving import InferenceService, Loader, load_from_storage
from kafkaml.errors import BadRequest, KmlError, NotFound
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


def build(settings: Settings, service: InferenceService) -> Function:
    """Infer's parts: the Kafka and CloudEvent paths, KServe V1 and metrics, model readiness."""
    metrics = service.metrics

    def observed(path: str, handler: Callable[[], Response]) -> Response:
        started = time.perf_counter()
        status, kind = 500, "internal"
        try:
            response = handler()
            status, kind = response.status_code, None
            return response
        except KmlError as e:
            status, kind = e.status, e.kind
            raise
        finally:
            metrics.observe_request(path, status, time.perf_counter() - started, kind)

    def kafka_event(event: Event) -> Response:
        return observed("kafka", lambda: json_response(handle_kafka_event(service, event)))

    def inference_request(event: Event) -> Response:
        def answer() -> Response:
            out = predict_instances(service, event.json())
            reply = new_event(
                INFERENCE_RESPONSE, f"/kml/infer/{settings.inference_id}", out, subject=event.id
            )
            return event_response(reply)

        return observed("event", answer)

    serving = Blueprint("serving", __name__)

    @serving.post("/v1/models/<name>:predict")
    def _kserve_predict(name: str) -> Response:
        def answer() -> Response:
            _check_name(service, name)
            body = request.get_json(silent=True)
            if body is None:
                raise BadRequest('the body must be JSON: {"instances": [...]}')
            return json_response(predict_instances(service, body))

        return observed("kserve", answer)

    @serving.get("/v1/models/<name>")
    def _kserve_metadata(name: str) -> Response:
        _check_name(service, name)
        return json_response(model_metadata(service))

    @serving.get("/metrics")
    def _metrics() -> Response:
        return Response(metrics.render(), content_type=metrics.content_type)

    return Function(
        name="infer",
        events={KAFKA_EVENT: kafka_event, INFERENCE_REQUEST: inference_request},
        ready=service.ready,
        close=service.close,
        blueprints=[serving],
    )


def _check_name(service: InferenceService, name: str) -> None:
    if not service.serves(name):
        raise NotFound(f"this service serves {service.spec['id']!r}, not {name!r}")
