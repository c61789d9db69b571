"""The dashboard's forms: each is one register CloudEvent (or, to train another deployment on a
stored stream, the stream's control message again, as Kafka-ML's datasource reuse does).

A created record redirects to its page; a refused one renders the form again as typed, with
register's own problems next to the fields they name and register's status (422, 409, ...).
"""

from __future__ import annotations

import json
import logging

from flask import Blueprint, redirect, request

from functions.dashboard import forms, pages
from functions.dashboard.parts import Parts
from kafkaml import events
from kafkaml.errors import KmlError, NotFound, ValidationFailed
from kafkaml.kafka import ConfirmingProducer
from kafkaml.wire import control_message_key, parse_control_message, to_control_message_bytes

log = logging.getLogger("kml.dashboard")


def refused(e: KmlError, fields, aliases=None) -> forms.FormErrors:
    """Register's answer placed on the form: every problem next to its field."""
    return forms.place_problems(e.message, getattr(e, "problems", []), fields, aliases)


def write_routes(parts: Parts) -> Blueprint:
    writes = Blueprint("writes", __name__)
    writes.register_error_handler(KmlError, pages.html_error)
    api = parts.register

    @writes.post("/models")
    def register_model():
        data = forms.model_event(request.form, request.files)
        try:
            record = api.send(events.MODEL_REGISTER, data)
        except KmlError as e:
            errors = refused(e, forms.MODEL_FIELDS, forms.MODEL_ALIASES)
            return pages.models_page(parts, request.form, errors, e.status)
        return redirect(f"/models/{record['name']}/{record['version']}", code=303)

    @writes.post("/configurations")
    def create_configuration():
        data = forms.configuration_event(request.form)
        try:
            api.send(events.CONFIGURATION_CREATE, data)
        except KmlError as e:
            errors = refused(e, forms.CONFIGURATION_FIELDS)
            return pages.configurations_page(parts, _typed(), errors, e.status)
        return redirect("/configurations", code=303)

    @writes.post("/deployments")
    def create_deployment():
        data = forms.deployment_event(request.form)
        try:
            record = api.send(events.DEPLOYMENT_CREATE, data)
        except KmlError as e:
            errors = refused(e, forms.DEPLOYMENT_FIELDS)
            return pages.deployments_page(parts, _typed(), errors, e.status)
        return redirect(f"/deployments/{record['id']}", code=303)

    @writes.post("/inference")
    def create_inference():
        data = forms.inference_event(request.form)
        try:
            record = api.send(events.INFERENCE_CREATE, data)
        except KmlError as e:
            errors = refused(e, forms.INFERENCE_FIELDS)
            return pages.inference_page(parts, _typed(), errors, e.status)
        return redirect(f"/inference/{record['id']}", code=303)

    @writes.post("/datasources/<datasource_id>/reuse")
    def reuse(datasource_id: str):
        """Train ``deployment_id`` on a stored stream: its control message, keyed anew."""
        stored = pages.stored_datasource(parts, datasource_id)
        deployment = (request.form.get("deployment_id") or "").strip()
        try:
            run_id = republish(parts, stored.get("control_message") or {}, deployment)
        except KmlError as e:
            errors = refused(e, ("deployment_id",))
            return pages.datasource_page(parts, datasource_id, _typed(), errors, e.status)
        return redirect(f"/runs/{run_id}", code=303)

    @writes.post("/streams/<stream_id>/stop")
    def stop_stream(stream_id: str):
        """Register's ``kml.stream.stop``: ticks no longer train the stream."""
        api.send(events.STREAM_STOP, {"stream_id": stream_id})
        return redirect(f"/streams/{stream_id}", code=303)

    return writes


def republish(parts: Parts, body: dict, deployment: str) -> str:
    """Check the deployment with register, then publish the control message keyed by it on the
    control topic (train takes it like any other); returns the run id it will train as."""
    try:
        parts.register.get("deployments", deployment or "-")
    except NotFound as e:
        raise ValidationFailed("unknown deployment", [f"deployment_id: {e.message}"]) from None
    message = parse_control_message(json.dumps(body).encode(), None, deployment_id=deployment)
    settings = parts.settings
    producer = ConfirmingProducer(settings.kafka, settings.kafka_timeout_s)
    producer.produce(
        settings.control_topic,
        to_control_message_bytes(message),
        control_message_key(deployment),
    )
    producer.flush()
    log.info(
        "control message republished",
        extra={"fields": {"deployment": deployment, "run": message.run_id()}},
    )
    return message.run_id()


def _typed() -> dict:
    """The form as typed, lists kept (checkboxes), for rendering it again."""
    return {k: (v if len(v) > 1 else v[0]) for k, v in request.form.lists()} | {
        "models": request.form.getlist("models")
    }
