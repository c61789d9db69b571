"""What each register event does, as plain functions over a ``Registry`` (the app only routes).

:func:`handle_event` is the whole of ``POST /``: the event's type picks the create function, a
redelivered event (same source and id) gets the first answer again (200) instead of a second
record, a new one gets the stored record (201); both as the matching ``*.created`` CloudEvent.

The event is claimed (a conditional create of its event record) BEFORE it is handled, so a
duplicate delivered while the first is still being validated finds the claim: it waits for the
first answer (bounded by ``register_event_wait_s``) and returns it, or answers 409 (retried).
A failed handling gives the claim back; a handler that died leaves a claim that lapses after
``register_event_hold_s``. Never two records for one event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from functions.register import schemas, validator
from kafkaml import events
from kafkaml.codecs import InvalidControlMessage, codec_for
from kafkaml.errors import Conflict, InvalidEvent, NotFound, ValidationFailed
from kafkaml.events import Event
from kafkaml.manifests import render_inference_manifests, to_yaml
from kafkaml.settings import Settings
from kafkaml.web import unknown_event_type
from storage.objects import PreconditionFailed
from storage.registry import EVENT_DONE, Registry, event_state

log = logging.getLogger("kml.register")
SOURCE = "/kml/register"
"""The ``source`` of register's answers."""

Create = Callable[[Registry, Settings, Any], dict[str, Any]]


def handle_event(registry: Registry, settings: Settings, event: Event) -> tuple[Event, int]:
    """The answer to one register CloudEvent and its status (201 created, 200 redelivered)."""
    if event.type not in ROUTES:
        raise unknown_event_type("register", event.type, ROUTES)
    answer_type, create = ROUTES[event.type]
    seen, etag = _claim(registry, settings, event)
    if etag is None:
        record, status = seen["answer"], 200  # a redelivery: the first answer again
    else:
        try:
            record = create(registry, settings, event.json())
        except BaseException as e:  # not handled: the next delivery handles it again
            registry.release_event(event.source, event.id, etag, f"{type(e).__name__}: {e}")
            raise
        status = 201
        if not registry.finish_event(event.source, event.id, etag, record):
            log.warning(
                "event answered after its claim lapsed",
                extra={"fields": {"event": event.id, "source": event.source}},
            )
    subject = str(record.get("id") or record.get("name") or event.id)
    return events.new_event(answer_type, SOURCE, record, subject=subject), status


def _claim(
    registry: Registry, settings: Settings, event: Event
) -> tuple[dict[str, Any], str | None]:
    """The event's claim (``etag`` set: handle it) or its first answer (``etag`` None).

    While another delivery holds the claim, wait for its answer up to ``register_event_wait_s``,
    then 409 (retried; the claim lapses if that delivery died).
    """
    deadline = time.monotonic() + settings.register_event_wait_s
    delay = 0.05
    while True:
        seen, etag = registry.claim_event(
            event.source, event.id, event.type, settings.register_event_hold_s
        )
        if etag is not None or event_state(seen) == EVENT_DONE:
            break
        if time.monotonic() >= deadline:
            raise Conflict(
                f"event {event.id!r} from {event.source!r} is being handled by another "
                "delivery; retry later",
                event_id=event.id,
            )
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 1.0)
    if etag is None and seen.get("type") != event.type:
        raise InvalidEvent(
            f"event id {event.id!r} from {event.source!r} was already used by a "
            f"{seen.get('type')} event (a CloudEvent's source and id identify it)",
            event_id=event.id,
        )
    return seen, etag


def register_model(registry: Registry, data: Any) -> dict[str, Any]:
    """``kml.model.register``: validate the Keras definition, store a new immutable version."""
    data = schemas.require_object(data, "kml.model.register")
    schemas.raise_if(schemas.check_model(data), "model definition")
    validated, keras_file = validator.validate(data)
    definition = {
        "description": data.get("description", ""),
        "format": "keras_file" if keras_file is not None else "keras_json",
        **validated.summary(),
    }
    if data.get("version") is not None:
        definition["version"] = data["version"]
    return registry.register_model(data["name"], definition, keras_file=keras_file)


def create_configuration(registry: Registry, data: Any) -> dict[str, Any]:
    """``kml.configuration.create``: a named group of models, versions pinned now."""
    data = schemas.require_object(data, "kml.configuration.create")
    schemas.raise_if(schemas.check_configuration(data), "configuration")
    return registry.create_configuration({"description": "", **data})


def create_deployment(
    registry: Registry, data: Any, settings: Settings | None = None
) -> dict[str, Any]:
    """``kml.deployment.create``: a configuration (or models) plus training parameters, within
    the settings' caps on epochs and batch size."""
    data = schemas.require_object(data, "kml.deployment.create")
    schemas.raise_if(schemas.check_deployment(data, settings), "deployment")
    record = {
        "description": "",
        "batch_size": 32,
        "epochs": 1,
        "shuffle": True,
        "seed": None,
        "learning_rate": None,
        "fit_kwargs": {},
        "evaluate_kwargs": {},
        "configuration": None,
        **data,
    }
    if record.get("id") is not None:
        record["id"] = str(record["id"])
    if record["configuration"] is not None:
        try:
            registry.get_configuration(record["configuration"])
        except NotFound:
            raise ValidationFailed(
                "unknown configuration",
                [f"configuration: no configuration {record['configuration']!r}"],
            ) from None
    return registry.create_deployment(record)


def create_inference(registry: Registry, settings: Settings, data: Any) -> dict[str, Any]:
    """``kml.inference.create``: check the run (or the stream and the run it promoted), store
    the spec, render and store manifests."""
    data = schemas.require_object(data, "kml.inference.create")
    schemas.raise_if(schemas.check_inference(data, settings), "inference")
    stream = _stream_of(registry, data["stream"]) if data.get("stream") is not None else None
    run_id = data["run_id"] if stream is None else (stream.get("promoted") or {}).get("run_id")
    if run_id is None:  # a stream that has promoted nothing yet: served once it has
        run: dict[str, Any] = {}
        model = _stream_model(stream, data.get("model"))
    else:
        run = _succeeded_run(registry, run_id)
        model = _pick_model(run, data.get("model"))
    input_format, input_config = _input_of(registry, run, data, stream)
    _check_input(input_format, input_config)
    spec = {
        "run_id": run_id,
        "model": model,
        "input_format": input_format,
        "input_config": input_config,
        "input_topic": data["input_topic"],
        "output_topic": data["output_topic"],
        "min_scale": data.get("min_scale", 0),
        "max_scale": data.get("max_scale", 5),
        "target_concurrency": data.get("target_concurrency", 10),
    }
    if data.get("id") is not None:
        spec["id"] = data["id"]
    if data.get("image") is not None:
        spec["image"] = data["image"]
    if data.get("public") is not None:
        spec["public"] = data["public"]
    if data.get("mode") is not None:
        spec["mode"] = data["mode"]
    if stream is not None:
        spec["stream"] = stream["id"]
    record = registry.create_inference(spec)
    text = to_yaml(render_inference_manifests(record, settings))
    key = registry.put_inference_manifests(record["id"], text)
    return {**record, "manifests": text, "manifests_key": key}


def _succeeded_run(registry: Registry, run_id: str) -> dict[str, Any]:
    """The run to serve: 409 while it trains, 422 when it did not succeed."""
    run, _ = registry.get_run(run_id)
    status = run.get("status")
    if status in ("claimed", "running"):
        raise Conflict(
            f"run {run_id} is {status}; deploy it once it has succeeded",
            run_id=run_id,
            run_status=status,
        )
    if status != "succeeded":
        reason = run.get("reason") or "no reason recorded"
        raise ValidationFailed(
            f"run {run_id} is {status}",
            [f"run_id: run {run_id} is {status} ({reason}); only a succeeded run can be deployed"],
        )
    return run


def _stream_of(registry: Registry, stream_id: str) -> dict[str, Any]:
    """The stream a spec follows (422 when there is none). One that has promoted nothing yet
    is followed too: its service is not ready until the first promotion."""
    try:
        stream, _ = registry.get_stream(stream_id)
    except NotFound:
        raise ValidationFailed(
            "unknown stream", [f"stream: no stream {stream_id!r} (kml streams list)"]
        ) from None
    return stream


def _stream_model(stream: dict[str, Any], wanted: str | None) -> str:
    """The model folder a stream's windows train (its deployment's model's name)."""
    trained = str(stream.get("model") or "").rsplit("@", 1)[0]
    if not trained:
        raise ValidationFailed("unknown model", ["stream: the stream record names no model"])
    if wanted is not None and wanted != trained:
        raise ValidationFailed(
            "unknown model", [f"model: the stream trains {trained!r}, not {wanted!r}"]
        )
    return trained


def _pick_model(run: dict[str, Any], wanted: str | None) -> str:
    trained = run.get("models") or {}
    if wanted is None:
        if len(trained) != 1:
            raise ValidationFailed(
                "which model?",
                [
                    f"model: required, the run trained {len(trained)} models "
                    f"({', '.join(sorted(trained)) or 'none'})"
                ],
            )
        wanted = next(iter(trained))
    if wanted not in trained:
        raise ValidationFailed(
            "unknown model",
            [f"model: the run has no model {wanted!r} (it has {', '.join(sorted(trained))})"],
        )
    artifacts = (trained[wanted] or {}).get("artifacts") or {}
    if not {"model.keras", "model.tflite"} & set(artifacts):
        raise ValidationFailed(
            "no trained artifact",
            [f"model: {wanted!r} has neither model.keras nor model.tflite in the run"],
        )
    return wanted


def _input_of(
    registry: Registry,
    run: dict[str, Any],
    data: dict[str, Any],
    stream: dict[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Input format and config: the event's, else those of the data the run trained on (its
    datasource, or the online stream's control message)."""
    fmt, config = data.get("input_format"), data.get("input_config")
    if fmt is not None and config is not None:
        return fmt, config
    source: dict[str, Any] = {}
    if stream is not None:
        source = stream.get("control_message") or {}
    elif run.get("datasource_id"):
        try:
            ds = registry.get_datasource(run["datasource_id"])
            source = ds.get("control_message") or ds
        except NotFound:
            source = {}
    fmt = fmt or source.get("input_format")
    config = config if config is not None else source.get("input_config")
    if fmt is None or config is None:
        raise ValidationFailed(
            "input format unknown",
            ["input_format / input_config: not given and the run's datasource has none"],
        )
    return fmt, config


def _check_input(input_format: Any, input_config: Any) -> None:
    """422 naming every field of an input config that no inference codec takes (checked here,
    or each record sent to the service would be answered 503 while it tried to load)."""
    if not isinstance(input_config, dict):
        raise ValidationFailed("invalid inference input", ["input_config: must be an object"])
    try:
        codec_for(str(input_format), input_config)  # labels optional: inference decodes none
    except InvalidControlMessage as e:
        raise ValidationFailed("invalid inference input", e.problems) from None


def stop_stream(registry: Registry, data: Any) -> dict[str, Any]:
    """``kml.stream.stop``: the stream's status becomes ``stopped`` (its windows and models stay),
    retried when a window commits at the same moment; stopping a stopped stream is a no-op."""
    stream_id = data.get("stream_id") if isinstance(data, dict) else None
    if not isinstance(stream_id, str) or not stream_id:
        raise ValidationFailed("invalid stream stop", ["stream_id: required"])
    for _ in range(5):
        stream, etag = registry.get_stream(stream_id)
        if stream.get("status") == "stopped":
            return stream
        try:
            return registry.update_stream(stream_id, etag, status="stopped")[0]
        except PreconditionFailed:
            continue  # a window committed meanwhile: stop the stream as it is now
    raise Conflict(f"stream {stream_id} keeps changing; retry", stream_id=stream_id)


ROUTES: dict[str, tuple[str, Create]] = {
    events.MODEL_REGISTER: (events.MODEL_REGISTERED, lambda r, s, d: register_model(r, d)),
    events.CONFIGURATION_CREATE: (
        events.CONFIGURATION_CREATED,
        lambda r, s, d: create_configuration(r, d),
    ),
    events.DEPLOYMENT_CREATE: (
        events.DEPLOYMENT_CREATED,
        lambda r, s, d: create_deployment(r, d, s),
    ),
    events.INFERENCE_CREATE: (events.INFERENCE_CREATED, create_inference),
    events.STREAM_STOP: (events.STREAM_STOPPED, lambda r, s, d: stop_stream(r, d)),
}
"""Event type -> (answer type, create function)."""
