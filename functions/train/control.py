"""Control messages out of train's CloudEvents, when they were sent, and train's own errors.

Train takes a Kafka-ML control record as KafkaSource delivers it (``dev.knative.kafka.event``)
or a ``kml.training.request``; the event's ``time`` (a Kafka record's timestamp) says how long
ago the message was produced, which bounds what may still be on its way.
"""

from __future__ import annotations

import json
from datetime import datetime

from kafkaml import events
from kafkaml.errors import InvalidEvent, KmlError, NotFound, Unavailable, ValidationFailed
from kafkaml.wire import ControlMessage, InvalidControlMessage, parse_control_message


class UnknownDeployment(ValidationFailed):
    kind = "unknown_deployment"


class DeploymentNotYet(NotFound):
    """A deployment unknown for now, named by a message still young enough that its
    ``kml.deployment.create`` may be on its way: 404, retried."""

    kind = "unknown_deployment_yet"


class NotReplicatedYet(Unavailable):
    """An ``end`` above the high watermark in a message young enough for replication lag."""

    kind = "offsets_not_replicated_yet"


class UseJobSink(ValidationFailed):
    """The work cannot finish within the HTTP request timeout: send it to the JobSink route."""

    kind = "use_jobsink"


class TrainerBusy(KmlError):
    status, kind = 429, "busy"


class RunFailed(KmlError):
    """A redelivered control message whose run already failed permanently."""

    kind = "run_failed"


EVENT_TYPES = (events.KAFKA_EVENT, events.TRAINING_REQUEST)
"""The CloudEvent types train takes: a control record from KafkaSource, or a training request."""


def event_time(event: events.Event) -> float | None:
    """When the event happened (for a Kafka record: its timestamp), epoch seconds, or None."""
    value = event.get("time")
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.timestamp()
    return None


def control_message_from_event(event: events.Event) -> ControlMessage:
    """The control message of a ``dev.knative.kafka.event`` or ``kml.training.request``.

    A Kafka record's deployment id is its key, Base64 in the ``key`` extension (the control
    KafkaSource is labelled ``key-type: byte-array``): Kafka-ML's one byte 0..255 or a UTF-8 id.
    """
    if event.type == events.KAFKA_EVENT:
        return parse_control_message(event.body_bytes(), events.record_key(event))
    if event.type == events.TRAINING_REQUEST:
        data = event.json()
        if not isinstance(data, dict):
            raise InvalidControlMessage(
                "invalid training request", ["data: expected a JSON object"]
            )
        deployment = data.get("deployment_id", "")
        if isinstance(deployment, int) and not isinstance(deployment, bool):
            deployment = str(deployment)
        body = {k: v for k, v in data.items() if k != "deployment_id"}
        return parse_control_message(json.dumps(body).encode(), None, deployment_id=deployment)
    raise InvalidEvent(
        f"the train function takes {events.KAFKA_EVENT} and "
        f"{events.TRAINING_REQUEST} events, not {event.type!r}"
    )
