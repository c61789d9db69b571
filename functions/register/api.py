"""Register's read API: plain JSON ``GET`` routes over the registry, for people and the CLI."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response

from kafkaml.errors import KmlError, ValidationFailed
from kafkaml.parsing import is_digits
from kafkaml.web import json_response
from storage.registry import Registry

log = logging.getLogger("kml.register")

EndOffsets = Callable[[str], dict[int, int]]
"""A topic's end offset per partition (Kafka's high watermarks)."""


def with_lag(stream: dict[str, Any], offsets: EndOffsets | None) -> dict[str, Any]:
    """The stream record plus ``lag``: records on its topic beyond the cursor (not trained yet),
    None when Kafka does not answer (the record itself is still worth showing)."""
    lag = None
    topic = stream.get("topic")
    if offsets is not None and isinstance(topic, str) and topic:
        try:
            ends = offsets(topic)
            cursor = stream.get("cursor") or {}
            lag = sum(max(0, end - int(cursor.get(str(p), 0))) for p, end in ends.items())
        except KmlError as e:
            log.warning("stream lag unknown", extra={"fields": {"reason": e.message}})
        except (AttributeError, TypeError, ValueError):  # a cursor this release cannot read
            log.warning("stream lag unknown", extra={"fields": {"stream": stream.get("id")}})
    return {**stream, "lag": lag}


def read_api(registry: Registry, offsets: EndOffsets | None = None) -> Blueprint:
    """Models, configurations, deployments, runs, datasources, inference specs and online
    streams (with their lag when ``offsets`` reads Kafka), read-only."""
    api = Blueprint("registry", __name__)

    @api.get("/models")
    def models() -> Response:
        return json_response(registry.list_models())

    @api.get("/models/<name>")
    def model(name: str) -> Response:
        return json_response(registry.get_model(name))

    @api.get("/models/<name>/<version>")
    def model_version(name: str, version: str) -> Response:
        if not is_digits(version):
            raise ValidationFailed("invalid version", [f"version: {version!r} is not a number"])
        return json_response(registry.get_model(name, int(version)))

    @api.get("/configurations")
    def configurations() -> Response:
        return json_response(registry.list_configurations())

    @api.get("/configurations/<name>")
    def configuration(name: str) -> Response:
        return json_response(registry.get_configuration(name))

    @api.get("/deployments")
    def deployments() -> Response:
        return json_response(registry.list_deployments())

    @api.get("/deployments/<deployment_id>")
    def deployment(deployment_id: str) -> Response:
        return json_response(registry.get_deployment(deployment_id))

    @api.get("/runs")
    def runs() -> Response:
        return json_response(registry.list_runs())

    @api.get("/runs/<run_id>")
    def run(run_id: str) -> Response:
        return json_response(registry.get_run(run_id)[0])

    @api.get("/datasources")
    def datasources() -> Response:
        return json_response(registry.list_datasources())

    @api.get("/inference")
    def inference_list() -> Response:
        return json_response(registry.list_inference())

    @api.get("/inference/<inference_id>")
    def inference(inference_id: str) -> Response:
        return json_response(registry.get_inference(inference_id))

    @api.get("/streams")
    def streams() -> Response:
        return json_response([with_lag(s, offsets) for s in registry.list_streams()])

    @api.get("/streams/<stream_id>")
    def stream(stream_id: str) -> Response:
        return json_response(with_lag(registry.get_stream(stream_id)[0], offsets))

    return api
