"""The train function's Flask app (gunicorn): control messages in, a finished run out.

Takes ``dev.knative.kafka.event`` deliveries from the control topic (body = a Kafka-ML control
message, deployment id in the ``key`` extension; see ``kafkaml.wire`` for the key rule) and
``kml.training.request`` events (control message fields plus ``deployment_id`` in data).
Answers 200 with the run record once the artifacts are durable; 409 while the same run is in
progress (KafkaSource retries); 4xx for permanent problems; 5xx for transient ones.
"""

from __future__ import annotations

from flask import Flask

from functions.train.service import Trainer, control_message_from_event
from kafkaml.settings import Settings
from kafkaml.web import configure_logging, install_common, json_response, received_event


def create_app(settings: Settings | None = None, trainer: Trainer | None = None) -> Flask:
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)
    trainer = trainer or Trainer.from_settings(settings)
    app = Flask("kml-train")
    app.extensions["kml.trainer"] = trainer
    install_common(app, settings, ready=trainer.registry.store.ping)

    @app.post("/")
    def receive():
        msg = control_message_from_event(received_event(settings))
        return json_response(trainer.train(msg, http=True))

    return app
