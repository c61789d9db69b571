"""The register function: models, configurations, deployments and inference specs (steps A-C, E).

``POST /`` takes CloudEvents (binary or structured) and answers with the matching CloudEvent
holding the stored record; ``GET`` routes are a plain JSON read API for people and the CLI.
Served by ``gunicorn 'functions.register.app:create_app()'``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask

from functions.register import handlers, validator
from kafkaml import events
from kafkaml.errors import InvalidEvent, ValidationFailed
from kafkaml.settings import Settings
from kafkaml.web import (
    configure_logging,
    event_response,
    install_common,
    json_response,
    received_event,
)
from storage.registry import Registry

SOURCE = "/kml/register"


def create_app(settings: Settings | None = None, registry: Registry | None = None) -> Flask:
    """The Flask app; ``registry`` defaults to one over the settings' object store."""
    settings = settings or Settings.from_env()
    registry = registry or Registry.from_settings(settings)
    configure_logging(settings.log_level)
    app = Flask("kml-register")
    install_common(app, settings, ready=registry.ensure_ready)
    validator.warm_up()

    routes: dict[str, tuple[str, Callable[[Any], dict[str, Any]]]] = {
        events.MODEL_REGISTER: (
            events.MODEL_REGISTERED,
            lambda d: handlers.register_model(registry, d),
        ),
        events.CONFIGURATION_CREATE: (
            events.CONFIGURATION_CREATED,
            lambda d: handlers.create_configuration(registry, d),
        ),
        events.DEPLOYMENT_CREATE: (
            events.DEPLOYMENT_CREATED,
            lambda d: handlers.create_deployment(registry, d),
        ),
        events.INFERENCE_CREATE: (
            events.INFERENCE_CREATED,
            lambda d: handlers.create_inference(registry, settings, d),
        ),
    }

    @app.post("/")
    def receive():
        event = received_event(settings)
        if event.type not in routes:
            raise InvalidEvent(
                f"unknown CloudEvent type {event.type!r}; register takes {', '.join(routes)}",
                ce_type=event.type,
            )
        answer_type, handle = routes[event.type]
        seen = registry.find_event(event.source, event.id)
        if seen is not None and seen.get("type") == event.type:
            record, status = seen["answer"], 200  # a redelivery: the first answer again
        else:
            record, status = handle(event.json()), 201
            registry.remember_event(event.source, event.id, event.type, record)
        subject = str(record.get("id") or record.get("name") or event.id)
        reply = events.new_event(answer_type, SOURCE, record, subject=subject)
        return event_response(reply, status)

    @app.get("/models")
    def models():
        return json_response(registry.list_models())

    @app.get("/models/<name>")
    def model(name: str):
        return json_response(registry.get_model(name))

    @app.get("/models/<name>/<version>")
    def model_version(name: str, version: str):
        if not version.isdigit():
            raise ValidationFailed("invalid version", [f"version: {version!r} is not a number"])
        return json_response(registry.get_model(name, int(version)))

    @app.get("/configurations")
    def configurations():
        return json_response(registry.list_configurations())

    @app.get("/configurations/<name>")
    def configuration(name: str):
        return json_response(registry.get_configuration(name))

    @app.get("/deployments")
    def deployments():
        return json_response(registry.list_deployments())

    @app.get("/deployments/<deployment_id>")
    def deployment(deployment_id: str):
        return json_response(registry.get_deployment(deployment_id))

    @app.get("/runs")
    def runs():
        return json_response(registry.list_runs())

    @app.get("/runs/<run_id>")
    def run(run_id: str):
        return json_response(registry.get_run(run_id)[0])

    @app.get("/datasources")
    def datasources():
        return json_response(registry.list_datasources())

    @app.get("/inference")
    def inference_list():
        return json_response(registry.list_inference())

    @app.get("/inference/<inference_id>")
    def inference(inference_id: str):
        return json_response(registry.get_inference(inference_id))

    return app
