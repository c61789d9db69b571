"""The register function: models, configurations, deployments and inference specs (steps A-C, E).

``POST /`` takes CloudEvents (binary or structured) and answers with the matching CloudEvent
holding the stored record (``handlers.handle_event``); ``GET`` routes are a plain JSON read API
for people and the CLI (``api.read_api``). Served by
``gunicorn 'functions.register.app:create_app()'``.
"""

from __future__ import annotations

from flask import Flask

from functions.register import handlers, validator
from functions.register.api import read_api
from kafkaml.events import Event
from kafkaml.kafka import end_offsets
from kafkaml.settings import Settings
from kafkaml.web import Function, event_response, function_app
from storage.registry import Registry


def create_app(settings: Settings | None = None, registry: Registry | None = None) -> Flask:
    """The Flask app; ``registry`` defaults to one over the settings' object store."""
    return function_app(settings, lambda s: build(s, registry or Registry.from_settings(s)))


def build(settings: Settings, registry: Registry) -> Function:
    """Register's parts: its event types, the read API, storage readiness, the validator."""

    def receive(event: Event):
        return event_response(*handlers.handle_event(registry, settings, event))

    def offsets(topic: str) -> dict[int, int]:  # a stream's lag, read where its records are
        return end_offsets(settings.kafka, topic, min(settings.kafka_timeout_s, 5.0))

    validator.warm_up(settings)
    return Function(
        name="register",
        events=dict.fromkeys(handlers.ROUTES, receive),
        ready=registry.ensure_ready,
        close=validator.shutdown,
        blueprints=[read_api(registry, offsets)],
    )
