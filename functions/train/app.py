"""The train function's Flask app (gunicorn): control messages in, a finished run out.

Takes ``dev.knative.kafka.event`` deliveries from the control topic (body = a Kafka-ML control
message, deployment id in the ``key`` extension; see ``kafkaml.wire`` for the key rule) and
``kml.training.request`` events (control message fields plus ``deployment_id`` in data).
Answers 200 with the run record once the artifacts are durable; 409 while the same run is in
progress (KafkaSource retries); 4xx for permanent problems; 5xx for transient ones.
"""

from __future__ import annotations

from flask import Flask, Response

from functions.train.online import TICK_TYPES, OnlineTrainer
from functions.train.service import EVENT_TYPES, Trainer, control_message_from_event, event_time
from functions.train.training import FrameworkImport
from kafkaml.events import Event
from kafkaml.settings import Settings
from kafkaml.web import Function, function_app, json_response


def create_app(
    settings: Settings | None = None,
    trainer: Trainer | None = None,
    *,
    preload: bool | None = None,
) -> Flask:
    """The Flask app; ``trainer`` defaults to one over the settings' storage and Kafka.

    ``preload`` (default: when the trainer is the real one, as gunicorn starts it) imports
    TensorFlow while starting and keeps readiness at 503 until it is imported."""
    if preload is None:
        preload = trainer is None

    def parts(s: Settings) -> Function:
        nonlocal trainer
        trainer = trainer or Trainer.from_settings(s)
        return build(trainer, FrameworkImport().start() if preload else None)

    app = function_app(settings, parts)
    app.extensions["kml.trainer"] = trainer
    return app


def build(trainer: Trainer, framework: FrameworkImport | None = None) -> Function:
    """Train's parts: both event types run the HTTP route of the trainer; readiness: storage
    reachable and (when preloading) TensorFlow imported."""

    online = OnlineTrainer(trainer)

    def receive(event: Event) -> Response:
        msg = control_message_from_event(event)
        if msg.incremental:  # Kafka-ML's online control message: start a stream
            return json_response(online.start(msg, sent_at=event_time(event)))
        return json_response(trainer.train(msg, http=True, sent_at=event_time(event)))

    def tick(event: Event) -> Response:
        return json_response(online.tick())

    def ready() -> None:
        if framework is not None:
            framework.check()
        trainer.registry.store.ping()

    return Function(
        name="train",
        events={**dict.fromkeys(EVENT_TYPES, receive), **dict.fromkeys(TICK_TYPES, tick)},
        ready=ready,
        close=trainer.close,
    )
