"""Register's read API: plain JSON ``GET`` routes over the registry, for people and the CLI."""

from __future__ import annotations

from flask import Blueprint, Response

from kafkaml.errors import ValidationFailed
from kafkaml.parsing import is_digits
from kafkaml.web import json_response
from storage.registry import Registry


def read_api(registry: Registry) -> Blueprint:
    """Models, configurations, deployments, runs, datasources and inference specs, read-only."""
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

    return api
