"""One training run, from a control message to a succeeded or failed run record.

validate -> deployment and models -> (HTTP: does it fit the request timeout?) -> claim the run
(conditional create; a redelivery finds it) -> datasource -> read and decode once -> for every
model: fit, evaluate, artifacts -> succeeded + ``kml.training.completed``. A failure marks the
run failed with its reason and publishes ``kml.training.failed``; 4xx failures are permanent (a
redelivery answers the same error), 5xx ones may be retried by a redelivery.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from functions.train import dataset
from functions.train.artifacts import save_artifacts
from functions.train.results import ResultsPublisher
from functions.train.training import train_model
from kafkaml import events
from kafkaml.errors import Conflict, InvalidEvent, KmlError, NotFound, ValidationFailed
from kafkaml.settings import Settings
from kafkaml.wire import ControlMessage, InvalidControlMessage, parse_control_message
from storage.objects import PreconditionFailed
from storage.registry import Registry
from storage.specs import Deployment

log = logging.getLogger("kml.train")


class UnknownDeployment(ValidationFailed):
    kind = "unknown_deployment"


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


@dataclass
class Trainer:
    settings: Settings
    registry: Registry
    publisher: ResultsPublisher
    reader: dataset.OffsetReader = dataset.read_from_kafka
    """Reads the control message's offset ranges (Kafka; an in-memory one in unit tests)."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_settings(cls, settings: Settings) -> Trainer:
        return cls(settings, Registry.from_settings(settings), ResultsPublisher(settings))

    def close(self) -> None:
        """Deliver the results events still queued (bounded), then let go of the producer."""
        self.publisher.close()

    # -- entry --------------------------------------------------------------------------------
    def train(self, msg: ControlMessage, *, http: bool) -> dict[str, Any]:
        """Run (or find) the training of ``msg``; the run record on success, else raises."""
        deployment = self._deployment(msg.deployment_id)
        models = self._models(deployment)
        estimate = self.estimate_seconds(msg, deployment, len(models))
        reserve, limit = self.settings.train_http_reserve_s, self.settings.request_timeout_s
        if http and estimate + reserve > limit:
            raise UseJobSink(
                f"estimated training time {estimate:.0f}s (+{reserve:g}s for data and "
                f"artifacts) exceeds the {limit:g}s HTTP "
                "request timeout; send this event to the train JobSink (batch mode) instead",
                [
                    f"work: {msg.record_count} records x "
                    f"{Deployment.from_dict(deployment).epochs} epochs x {len(models)} models"
                ],
                estimate_s=round(estimate, 1),
            )
        if not self._lock.acquire(blocking=not http):
            raise TrainerBusy("the train function is busy with another run; retry later")
        try:
            return self._run(msg, deployment, models, estimate, http)
        finally:
            self._lock.release()

    def estimate_seconds(
        self, msg: ControlMessage, deployment: dict[str, Any], n_models: int
    ) -> float:
        epochs = Deployment.from_dict(deployment).epochs
        return msg.record_count * epochs * n_models * self.settings.train_record_epoch_budget_s

    # -- lookups ------------------------------------------------------------------------------
    def _deployment(self, deployment_id: str) -> dict[str, Any]:
        try:
            return self.registry.get_deployment(deployment_id)
        except (NotFound, ValidationFailed):
            raise UnknownDeployment(
                f"unknown deployment {deployment_id!r}",
                [f"deployment_id: no deployment {deployment_id!r}"],
                deployment_id=deployment_id,
            ) from None

    def _models(self, deployment: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            models = self.registry.resolve_models(deployment)
        except NotFound as e:
            raise UnknownDeployment(
                f"deployment {deployment.get('id')}: {e.message}", [e.message]
            ) from None
        if not models:
            raise UnknownDeployment(f"deployment {deployment.get('id')} has no models")
        return models

    # -- the run ------------------------------------------------------------------------------
    def _claim(
        self, msg: ControlMessage, estimate: float, http: bool
    ) -> tuple[dict[str, Any] | None, str]:
        """``(None, etag)`` when this call owns the run; ``(record, "")`` when it succeeded."""
        run_id = msg.run_id()
        lease = self.settings.request_timeout_s + (0 if http else 3 * estimate)
        fields = {"lease_expires": time.time() + lease, "mode": "http" if http else "batch"}
        initial = {
            "deployment_id": msg.deployment_id,
            "datasource_id": msg.stream_id(),
            "ranges": [str(r) for r in msg.ranges],
            "records": msg.record_count,
            "attempt": 1,
            **fields,
        }
        record, created = self.registry.claim_run(run_id, initial)
        record, etag = self.registry.get_run(run_id)
        if created:
            return None, etag
        status = record.get("status")
        if status == "succeeded":
            return record, ""
        if status in ("claimed", "running") and time.time() < record.get("lease_expires", 0):
            raise Conflict(f"run {run_id} is {status}; retry later", run_id=run_id)
        if status == "failed" and record.get("permanent", True):
            raise RunFailed(
                record.get("reason") or f"run {run_id} failed",
                status=int(record.get("error_status") or 422),
                run_id=run_id,
                problems=record.get("problems") or [],
            )
        try:  # a transient failure or an abandoned run (lease expired): take it over
            _, etag = self.registry.update_run(
                run_id,
                etag,
                status="claimed",
                reason=None,
                attempt=int(record.get("attempt", 1)) + 1,
                **fields,
            )
        except PreconditionFailed:
            raise Conflict(
                f"run {run_id} was taken over by another delivery; retry later", run_id=run_id
            ) from None
        return None, etag

    def _run(
        self,
        msg: ControlMessage,
        deployment: dict[str, Any],
        models: list[dict[str, Any]],
        estimate: float,
        http: bool,
    ) -> dict[str, Any]:
        run_id = msg.run_id()
        done, etag = self._claim(msg, estimate, http)
        if done is not None:
            log.info("run already succeeded", extra={"fields": {"run": run_id}})
            return done
        context = {"run": run_id, "deployment": msg.deployment_id}
        log.info(
            "training",
            extra={
                "fields": {
                    **context,
                    "records": msg.record_count,
                    "models": len(models),
                    "estimate_s": estimate,
                }
            },
        )
        try:
            self.registry.put_datasource(
                msg.stream_id(),
                {"control_message": msg.body(), "ranges": [str(r) for r in msg.ranges]},
            )
            seed = deployment.get("seed")
            if seed is None:
                seed = int(hashlib.sha256(run_id.encode()).hexdigest()[:8], 16) % 2**31
            _, etag = self.registry.update_run(run_id, etag, status="running", seed=int(seed))
            data = dataset.load(self.settings, msg, int(seed), self.reader)
            results = self._train_all(run_id, msg, deployment, models, data)
            record, _ = self.registry.update_run(
                run_id,
                etag,
                status="succeeded",
                models=results,
                splits=data.sizes(),
                permanent=False,
            )
        except KmlError as e:
            self._fail(run_id, msg, e)
            raise
        except Exception as e:
            log.exception("training failed", extra={"fields": context})
            error = KmlError(f"training failed: {type(e).__name__}", status=500, run_id=run_id)
            self._fail(run_id, msg, error)
            raise error from None
        log.info("run succeeded", extra={"fields": context})
        try:
            self.publisher.completed(record)
        except KmlError as e:  # the run and artifacts are durable; only the notice is lost
            log.warning(
                "completed event not published", extra={"fields": {**context, "reason": e.message}}
            )
        return record

    def _train_all(
        self,
        run_id: str,
        msg: ControlMessage,
        deployment: dict[str, Any],
        models: list[dict[str, Any]],
        data: dataset.Dataset,
    ) -> dict[str, Any]:
        names = [m.get("name", "model") for m in models]
        epochs = Deployment.from_dict(deployment).epochs
        results: dict[str, Any] = {}
        for record, name in zip(models, names, strict=True):
            folder = name if names.count(name) == 1 else f"{name}.v{record.get('version')}"

            def on_epoch(epoch: int, metrics: dict[str, float], folder: str = folder) -> None:
                self.publisher.progress(run_id, msg.deployment_id, folder, epoch, epochs, metrics)

            trained = train_model(
                record, deployment, data, on_epoch, self.registry.store.download_file
            )
            saved = save_artifacts(self.registry, run_id, folder, trained)
            results[folder] = {"model": f"{name}@{record.get('version')}", **saved}
        return results

    def _fail(self, run_id: str, msg: ControlMessage, error: KmlError) -> None:
        permanent = not error.retryable
        error.details.setdefault("run_id", run_id)
        try:
            current, etag = self.registry.get_run(run_id)
            if current.get("status") not in ("succeeded", "failed"):
                self.registry.update_run(
                    run_id,
                    etag,
                    status="failed",
                    reason=error.message,
                    error_status=error.status,
                    permanent=permanent,
                    problems=getattr(error, "problems", []),
                )
        except KmlError as e:  # storage down: the lease lets a later delivery take over
            log.warning(
                "run not marked failed", extra={"fields": {"run": run_id, "reason": e.message}}
            )
        self.publisher.failed(run_id, msg.deployment_id, error)
