"""Training events on the results topic: progress per epoch, completed, failed (structured)."""

from __future__ import annotations

import logging
from typing import Any

from kafkaml import events
from kafkaml.errors import KmlError
from kafkaml.kafka import ConfirmingProducer
from kafkaml.settings import Settings

log = logging.getLogger("kml.train")
SOURCE = "/kml/functions/train"


class ResultsPublisher:
    """Publishes ``kml.training.*`` events keyed by run id (one partition keeps their order)."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.results_topic
        self._settings = settings
        self._producer: ConfirmingProducer | None = None

    @property
    def producer(self) -> ConfirmingProducer:
        if self._producer is None:
            self._producer = ConfirmingProducer(
                self._settings.kafka, self._settings.kafka_timeout_s
            )
        return self._producer

    def close(self) -> None:
        """Wait (bounded by the Kafka timeout) for events still queued, then drop the producer."""
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.flush()

    def _publish(self, type_: str, run_id: str, data: dict[str, Any], wait: bool) -> None:
        event = events.new_event(type_, SOURCE, {"run_id": run_id, **data}, subject=run_id)
        self.producer.publish_event(self.topic, event, key=run_id, wait=wait)

    def progress(
        self,
        run_id: str,
        deployment_id: str,
        model: str,
        epoch: int,
        epochs: int,
        metrics: dict[str, float],
    ) -> None:
        """Best effort, not awaited: a slow broker never stalls training."""
        try:
            self._publish(
                events.TRAINING_PROGRESS,
                run_id,
                {
                    "deployment_id": deployment_id,
                    "model": model,
                    "epoch": epoch,
                    "epochs": epochs,
                    "metrics": metrics,
                },
                wait=False,
            )
        except KmlError as e:
            log.warning(
                "progress event not published",
                extra={"fields": {"run": run_id, "reason": e.message}},
            )

    def completed(self, run: dict[str, Any]) -> None:
        self._publish(
            events.TRAINING_COMPLETED,
            run["run_id"],
            {
                k: run.get(k)
                for k in ("deployment_id", "datasource_id", "status", "models", "records", "seed")
            },
            wait=True,
        )

    def failed(self, run_id: str, deployment_id: str, error: KmlError) -> None:
        """Awaited, but a failure to publish is only logged (the run record keeps the reason)."""
        try:
            self._publish(
                events.TRAINING_FAILED,
                run_id,
                {
                    "deployment_id": deployment_id,
                    "status": "failed",
                    "reason": error.message,
                    "error_status": error.status,
                    "permanent": not error.retryable,
                    "problems": getattr(error, "problems", []),
                },
                wait=True,
            )
        except KmlError as e:
            log.warning(
                "failed event not published", extra={"fields": {"run": run_id, "reason": e.message}}
            )
