"""One training run, from a control message to a succeeded or failed run record.

validate -> deployment and models -> (HTTP: does it fit the request timeout?) -> claim the run
(conditional create; a redelivery finds it) -> datasource -> read and decode once -> for every
model: fit, evaluate, artifacts -> succeeded + ``kml.training.completed``. A failure marks the
run failed with its reason and publishes ``kml.training.failed``; 4xx failures are permanent (a
redelivery answers the same error), 5xx ones may be retried by a redelivery. Every permanent
failure publishes ``kml.training.failed``, also those found before there is a run (unknown
deployment, unknown models, too much work for the HTTP route), so a client never waits forever.

The claim is a lease (``functions.train.lease``): renewed while the attempt trains, it lapses
within ``train_lease_s`` of a crash and the next delivery takes the run over (attempt + 1).

Things still on their way are not mistakes for a bounded while (``train_arrival_grace_s``,
counted from the control message's Kafka timestamp, the event's ``time``): a deployment whose
``kml.deployment.create`` register has not processed yet is 404 (retried), an ``end`` above the
high watermark that replication has not reached yet is 503 (retried); once the message is older,
both are permanent (422 and ``kml.training.failed``). A message without a time is judged at once.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from functions.train import dataset
from functions.train.artifacts import artifact_folders, save_artifacts
from functions.train.control import (
    EVENT_TYPES,
    DeploymentNotYet,
    NotReplicatedYet,
    RunFailed,
    TrainerBusy,
    UnknownDeployment,
    UseJobSink,
    control_message_from_event,
    event_time,
)
from functions.train.lease import Lease, RunTakenOver
from functions.train.results import ResultsPublisher
from functions.train.training import train_model
from kafkaml import events
from kafkaml.errors import Conflict, KmlError, NotFound, ValidationFailed
from kafkaml.kafka import OffsetRangeUnavailable
from kafkaml.settings import Settings
from kafkaml.wire import ControlMessage
from storage.objects import PreconditionFailed
from storage.registry import Registry
from storage.specs import Deployment

log = logging.getLogger("kml.train")
__all__ = [
    "EVENT_TYPES",
    "DeploymentNotYet",
    "NotReplicatedYet",
    "RunFailed",
    "Trainer",
    "TrainerBusy",
    "UnknownDeployment",
    "UseJobSink",
    "control_message_from_event",
    "event_time",
]


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
    def handle(self, event: events.Event, *, http: bool) -> dict[str, Any]:
        """Train from a control-message event (its time bounds the arrival grace)."""
        return self.train(control_message_from_event(event), http=http, sent_at=event_time(event))

    def train(
        self, msg: ControlMessage, *, http: bool, sent_at: float | None = None
    ) -> dict[str, Any]:
        """Run (or find) the training of ``msg``; the run record on success, else raises.

        ``sent_at`` is when the message was produced (epoch seconds; None: unknown, so nothing
        is waited for).
        """
        try:
            deployment = self._deployment(msg.deployment_id, sent_at)
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
        except KmlError as e:  # before any run: a permanent failure is still announced
            if not e.retryable:
                e.details.setdefault("run_id", msg.run_id())
                self.publisher.failed(msg.run_id(), msg.deployment_id, e)
            raise
        if not self._lock.acquire(blocking=not http):
            raise TrainerBusy("the train function is busy with another run; retry later")
        try:
            return self._run(msg, deployment, models, estimate, http, sent_at)
        finally:
            self._lock.release()

    def estimate_seconds(
        self, msg: ControlMessage, deployment: dict[str, Any], n_models: int
    ) -> float:
        epochs = Deployment.from_dict(deployment).epochs
        return msg.record_count * epochs * n_models * self.settings.train_record_epoch_budget_s

    def _young(self, sent_at: float | None) -> float | None:
        """The message's age while it is within the arrival grace, else None."""
        if sent_at is None:
            return None
        age = max(0.0, time.time() - sent_at)
        return age if age < self.settings.train_arrival_grace_s else None

    # -- lookups ------------------------------------------------------------------------------
    def _deployment(self, deployment_id: str, sent_at: float | None = None) -> dict[str, Any]:
        try:
            return self.registry.get_deployment(deployment_id)
        except ValidationFailed:
            pass
        except NotFound:
            age = self._young(sent_at)
            if age is not None:
                grace = self.settings.train_arrival_grace_s
                raise DeploymentNotYet(
                    f"unknown deployment {deployment_id!r} (the message is {age:.0f}s old: "
                    f"retried for up to {grace:g}s in case its kml.deployment.create is still "
                    "on its way)",
                    deployment_id=deployment_id,
                ) from None
        raise UnknownDeployment(
            f"unknown deployment {deployment_id!r}",
            [f"deployment_id: no deployment {deployment_id!r}"],
            deployment_id=deployment_id,
        )

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
    def _claim(self, msg: ControlMessage, http: bool) -> tuple[dict[str, Any] | None, str]:
        """``(None, etag)`` when this call holds the run now; ``(record, "")`` when it succeeded.

        A run held by a live lease is 409 (retried); the batch route first waits (bounded by
        one lease) for a lease that may be lapsing, since a Job retries only a few times.
        """
        run_id = msg.run_id()
        lease = self.settings.train_lease_s
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
        give_up = time.monotonic() + (0 if http else lease + 5)
        while record.get("status") in ("claimed", "running"):
            left = float(record.get("lease_expires", 0)) - time.time()
            if left <= 0:
                break
            if time.monotonic() + left > give_up:
                raise Conflict(
                    f"run {run_id} is {record['status']} (attempt {record.get('attempt', 1)} "
                    f"holds it for {left:.0f}s more); retry later",
                    run_id=run_id,
                )
            time.sleep(min(left + 0.5, 5.0))
            record, etag = self.registry.get_run(run_id)
        status = record.get("status")
        if status == "succeeded":
            return record, ""
        if status == "failed" and record.get("permanent", True):
            raise RunFailed(
                record.get("reason") or f"run {run_id} failed",
                status=int(record.get("error_status") or 422),
                run_id=run_id,
                problems=record.get("problems") or [],
            )
        try:  # a transient failure, a retry asked for, or an abandoned run: take it over
            _, etag = self.registry.update_run(
                run_id,
                etag,
                status="claimed",
                reason=None,
                attempt=int(record.get("attempt", 1)) + 1,
                previous={"status": status, "reason": record.get("reason")},
                **{**fields, "lease_expires": time.time() + lease},
            )
        except PreconditionFailed:
            raise Conflict(
                f"run {run_id} was taken over by another delivery; retry later", run_id=run_id
            ) from None
        log.info(
            "run taken over",
            extra={"fields": {"run": run_id, "from": status, "attempt": record.get("attempt")}},
        )
        return None, etag

    def _run(
        self,
        msg: ControlMessage,
        deployment: dict[str, Any],
        models: list[dict[str, Any]],
        estimate: float,
        http: bool,
        sent_at: float | None = None,
    ) -> dict[str, Any]:
        run_id = msg.run_id()
        done, etag = self._claim(msg, http)
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
        with Lease(self.registry, run_id, etag, self.settings.train_lease_s) as lease:
            try:
                self.registry.put_datasource(
                    msg.stream_id(),
                    {"control_message": msg.body(), "ranges": [str(r) for r in msg.ranges]},
                )
                seed = deployment.get("seed")
                if seed is None:
                    seed = int(hashlib.sha256(run_id.encode()).hexdigest()[:8], 16) % 2**31
                lease.update(status="running", seed=int(seed))
                data = self._load(msg, int(seed), sent_at)
                results = self._train_all(lease, msg, deployment, models, data)
                record = lease.update(
                    status="succeeded", models=results, splits=data.sizes(), permanent=False
                )
            except RunTakenOver:
                raise  # the other attempt owns the run and its outcome
            except KmlError as e:
                self._fail(lease, msg, e)
                raise
            except Exception as e:
                log.exception("training failed", extra={"fields": context})
                error = KmlError(f"training failed: {type(e).__name__}", status=500, run_id=run_id)
                self._fail(lease, msg, error)
                raise error from None
        log.info("run succeeded", extra={"fields": {**context, "renewals": lease.renewals}})
        try:
            self.publisher.completed(record)
        except KmlError as e:  # the run and artifacts are durable; only the notice is lost
            log.warning(
                "completed event not published", extra={"fields": {**context, "reason": e.message}}
            )
        return record

    def _load(self, msg: ControlMessage, seed: int, sent_at: float | None) -> dataset.Dataset:
        """The dataset; an ``end`` only above the high watermark is transient while young."""
        try:
            return dataset.load(self.settings, msg, seed, self.reader)
        except OffsetRangeUnavailable as e:
            lagging = e.details.get("beyond_high_watermark") or []
            age = self._young(sent_at)
            if age is None or not lagging or len(lagging) != len(e.problems):
                raise
            raise NotReplicatedYet(
                f"{e.message} (the message is {age:.0f}s old: retried for up to "
                f"{self.settings.train_arrival_grace_s:g}s while the records may still be "
                "replicating)",
                run_id=msg.run_id(),
                problems=e.problems,
            ) from None

    def _train_all(
        self,
        lease: Lease,
        msg: ControlMessage,
        deployment: dict[str, Any],
        models: list[dict[str, Any]],
        data: dataset.Dataset,
    ) -> dict[str, Any]:
        run_id, epochs = lease.run_id, Deployment.from_dict(deployment).epochs
        results: dict[str, Any] = {}
        for record, folder in zip(models, artifact_folders(models), strict=True):

            def on_epoch(epoch: int, metrics: dict[str, float], folder: str = folder) -> None:
                lease.check()  # taken over: stop fitting, the other attempt finishes the run
                self.publisher.progress(run_id, msg.deployment_id, folder, epoch, epochs, metrics)

            trained = train_model(
                record, deployment, data, on_epoch, self.registry.store.download_file
            )
            lease.check()
            saved = save_artifacts(self.registry, run_id, folder, trained)
            results[folder] = {"model": f"{record.get('name')}@{record.get('version')}", **saved}
        return results

    def _fail(self, lease: Lease, msg: ControlMessage, error: KmlError) -> None:
        """Mark the run failed and announce it; ``RunTakenOver`` if it is no longer ours."""
        permanent = not error.retryable
        error.details.setdefault("run_id", lease.run_id)
        try:
            lease.update(
                status="failed",
                reason=error.message,
                error_status=error.status,
                permanent=permanent,
                problems=getattr(error, "problems", []),
            )
        except RunTakenOver:
            raise  # not this attempt's run any more: its owner reports the outcome
        except KmlError as e:  # storage down: the lease lapses and a later delivery takes over
            log.warning(
                "run not marked failed",
                extra={"fields": {"run": lease.run_id, "reason": e.message}},
            )
        self.publisher.failed(lease.run_id, msg.deployment_id, error)
