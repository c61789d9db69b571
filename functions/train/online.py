"""Online training on live streams: no process runs between windows.

A Kafka-ML online control message (bare topic, ``incremental: true``) starts a *stream*: a
record ``streams/<id>.json`` with the topic's end offsets at that moment as its cursor. Every
tick (a PingSource cron event, or ``kml.stream.tick``) reads each open stream: the records
beyond the cursor form the next window ``[cursor, end)``, trained as an ordinary idempotent run
(deterministic run id from the stream and the offsets) warm-started from the promoted model.
Test-then-train: the promoted model and the candidate are both scored on the window's held-out
split before anything moves. The cursor, the window history and the promoted pointer change
in one conditional write after the run is durable, so a redelivered tick finds the run and
trains nothing twice, and a window that dies midway leaves the cursor where it was.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from functions.train import dataset
from functions.train.artifacts import save_artifacts
from functions.train.lease import Lease, RunTakenOver
from functions.train.plots import stream_png
from functions.train.service import RunFailed, Trainer, UnknownDeployment
from functions.train.training import train_model
from functions.train.windows import (
    metric_key,
    score,
    should_promote,
    stream_id_for,
    window_ranges,
    window_run_id,
)
from kafkaml import events
from kafkaml.errors import Conflict, KmlError, NotFound, ValidationFailed
from kafkaml.kafka import end_offsets, offsets_at
from kafkaml.wire import ControlMessage, OffsetRange
from storage.objects import PreconditionFailed
from storage.records import KERAS_FILE
from storage.specs import Deployment

log = logging.getLogger("kml.train.online")
SOURCE = "/kml/functions/train"
TICK_TYPES = (events.STREAM_TICK, events.PING_EVENT)
DEFAULT_HELD_OUT = 0.2
"""Held-out fraction of a window when the control message asks for neither test nor validation
(Kafka-ML's OnlineRawSink sends ``test_rate: 0``): prequential scores need data neither model
trained on."""


EndOffsets = Callable[[str], dict[int, int]]


@dataclass
class OnlineTrainer:
    """Starts streams and trains their windows, over a ``Trainer``'s storage, Kafka and events."""

    trainer: Trainer
    offsets: EndOffsets | None = None
    """The end offsets of a topic (Kafka's high watermarks by default)."""
    offsets_since: Callable[[str, float], dict[int, int]] | None = None
    """A topic's first offsets written at or after a time (Kafka's offsets-for-times)."""

    def __post_init__(self) -> None:
        self.settings = self.trainer.settings
        self.registry = self.trainer.registry
        if self.offsets is None:
            s = self.settings
            self.offsets = lambda topic: end_offsets(s.kafka, topic, s.kafka_timeout_s)
        if self.offsets_since is None:
            s = self.settings
            self.offsets_since = lambda topic, at: offsets_at(s.kafka, topic, at, s.kafka_timeout_s)

    # -- start ----------------------------------------------------------------------------------
    def start(self, msg: ControlMessage, sent_at: float | None = None) -> dict[str, Any]:
        """The stream of an online control message (created once; a redelivery finds it).

        It starts where the topic ended when the control message was written (``sent_at``, the
        record's timestamp), not when it is handled: Kafka-ML's ``OnlineRawSink`` sends the
        control message and then the data at once, and those first records belong to the
        stream however late the delivery."""
        try:
            deployment = self.registry.get_deployment(msg.deployment_id)
        except (NotFound, ValidationFailed):
            raise UnknownDeployment(
                f"unknown deployment {msg.deployment_id!r}",
                [f"deployment_id: no deployment {msg.deployment_id!r}"],
                deployment_id=msg.deployment_id,
            ) from None
        models = self.registry.resolve_models(deployment)
        if len(models) != 1:
            raise ValidationFailed(
                f"deployment {msg.deployment_id}: an online stream trains one model",
                [f"models: {len(models)} models; deploy exactly one for online training"],
            )
        policy = dict(msg.online or {})
        stream_id = stream_id_for(msg.deployment_id, msg.topic)
        ends = (
            self.offsets(msg.topic) if sent_at is None else self.offsets_since(msg.topic, sent_at)
        )
        start = {str(p): o for p, o in ends.items()}
        timeout = int(policy["stream_timeout"])
        held_out = msg.test_rate or msg.validation_rate or DEFAULT_HELD_OUT
        model = models[0]
        record = {
            "deployment_id": msg.deployment_id,
            "topic": msg.topic,
            "control_message": {**msg.body(), **policy},
            "status": "open",
            "start": start,
            "cursor": dict(start),
            "window_records": policy.get("window_records"),
            "window_seconds": None if timeout < 0 else timeout / 1000,
            "indefinite": bool(policy["indefinite"]) or timeout < 0,
            "metric": policy["monitoring_metric"],
            "change": policy["change"],
            "improvement": float(policy["improvement"]),
            "test_rate": msg.test_rate
            if msg.test_rate
            else (0.0 if msg.validation_rate else held_out),
            "model": f"{model['name']}@{model['version']}",
            "promoted_model_name": f"{model['name']}-{stream_id}",
            "windows": [],
            "promoted": None,
            "promotions": 0,
            "last_data": time.time(),
        }
        stream, created = self.registry.create_stream(stream_id, record)
        log.info(
            "stream started" if created else "stream exists",
            extra={"fields": {"stream": stream_id, "topic": msg.topic, "start": start}},
        )
        return stream

    # -- ticks ----------------------------------------------------------------------------------
    def tick(self) -> dict[str, Any]:
        """One window of every open stream, each on its own: a stream whose window another
        attempt holds (409) is skipped, one that fails is reported with its status, and the
        others train. The answer is 200 with every stream's outcome: the PingSource ticks again
        within a minute, so a skipped or failed window is tried again without a redelivery,
        and a permanent failure is never retried for ever. Only a transient fault that failed
        every stream (Kafka or storage away) answers its 5xx, so the outage shows."""
        open_streams = [s for s in self.registry.list_streams() if s.get("status") == "open"]
        outcomes = [self._step(stream) for stream in open_streams]
        faults = [e for _, e in outcomes if _transient(e)]
        if faults and len(faults) == len(outcomes):
            raise faults[0]
        return {"streams": [entry for entry, _ in outcomes]}

    def _step(self, stream: dict[str, Any]) -> tuple[dict[str, Any], KmlError | None]:
        """One stream's part of a tick: its outcome, and the error that stopped it (if any)."""
        sid = stream.get("id")
        try:
            return self.advance(sid), None
        except Conflict as e:  # its window is another attempt's: the next tick looks again
            log.info(
                "window held; stream skipped",
                extra={"fields": {"stream": sid, "reason": e.message}},
            )
            return {"stream_id": sid, "skipped": "held", "error": e.message, "status": e.status}, e
        except KmlError as e:
            log.warning(
                "window not trained", extra={"fields": {"stream": sid, "reason": e.message}}
            )
            return {"stream_id": sid, "error": e.message, "status": e.status}, e
        except (KeyError, TypeError, ValueError) as e:  # e.g. a stream record lacking a field
            reason = f"window failed: {type(e).__name__}: {e}"
            log.error("window not trained", extra={"fields": {"stream": sid, "reason": reason}})
            return {"stream_id": sid, "error": reason, "status": 422}, None

    def advance(self, stream_id: str) -> dict[str, Any]:
        """Train the next window of one stream, or close it after its timeout without data."""
        stream, etag = self.registry.get_stream(stream_id)
        if stream.get("status") != "open":
            return {"stream_id": stream_id, "window": None, "status": stream.get("status")}
        ends = self.offsets(stream["topic"])
        ranges = window_ranges(stream["topic"], stream["cursor"], ends, stream["window_records"])
        if not ranges:
            idle = time.time() - float(stream.get("last_data", 0))
            limit = stream.get("window_seconds")
            if not stream.get("indefinite") and limit is not None and idle > limit:
                self.registry.update_stream(stream_id, etag, status="closed")
                log.info("stream closed", extra={"fields": {"stream": stream_id, "idle_s": idle}})
                return {"stream_id": stream_id, "window": None, "status": "closed"}
            return {"stream_id": stream_id, "window": None, "status": "open"}
        msg = self._window_message(stream, ranges)
        run_id = window_run_id(stream_id, ranges)
        try:
            run = self._window_run(stream, msg, run_id)
        except KmlError as e:
            if not e.retryable and not isinstance(e, Conflict):
                self._stop_failed(stream_id, etag, run_id, e)
            raise
        return self._commit(stream_id, stream, etag, ranges, run)

    def _stop_failed(self, stream_id: str, etag: str, run_id: str, error: KmlError) -> None:
        """A window that can never train (its records do not decode, its deployment is gone)
        fails its stream: ``failed`` with the reason and the window's run, shown by ``kml streams
        list|show``, and no tick tries it again. The cursor stays before the window."""
        try:
            self.registry.update_stream(
                stream_id, etag, status="failed", reason=error.message, failed_run=run_id
            )
        except PreconditionFailed:  # changed meanwhile (stopped, say): the next tick decides
            return
        log.error(
            "stream failed",
            extra={"fields": {"stream": stream_id, "run": run_id, "reason": error.message}},
        )

    # -- one window -----------------------------------------------------------------------------
    def _window_message(self, stream: dict[str, Any], ranges: list[OffsetRange]) -> ControlMessage:
        body = stream["control_message"]
        return ControlMessage(
            deployment_id=stream["deployment_id"],
            topic=",".join(str(r) for r in ranges),
            input_format=body["input_format"],
            input_config=body["input_config"],
            validation_rate=float(body.get("validation_rate") or 0),
            test_rate=float(stream["test_rate"]),
            total_msg=sum(r.count for r in ranges),
            description=body.get("description") or "",
        )

    def _base_model(self, stream: dict[str, Any]) -> dict[str, Any]:
        """The model record a window starts from: the promoted model's weights, else the
        deployment's model as registered."""
        record = dict(self.registry.get_model_ref(stream["model"]))
        promoted = stream.get("promoted")
        if promoted:
            record.update(format=KERAS_FILE, keras_file=promoted["artifact"])
        return record

    def _window_run(
        self, stream: dict[str, Any], msg: ControlMessage, run_id: str
    ) -> dict[str, Any]:
        """The succeeded run of this window (trained now, or found from an earlier delivery)."""
        lease = self.settings.train_lease_s  # renewed while the window trains, as an ordinary run
        initial = {
            "deployment_id": msg.deployment_id,
            "stream_id": stream["id"],
            "ranges": [str(r) for r in msg.ranges],
            "records": msg.record_count,
            "attempt": 1,
            "lease_expires": time.time() + lease,
            "mode": "online",
        }
        record, created = self.registry.claim_run(run_id, initial)
        record, run_etag = self.registry.get_run(run_id)
        if not created:
            status = record.get("status")
            if status == "succeeded":
                return record
            if status in ("claimed", "running") and time.time() < record.get("lease_expires", 0):
                raise Conflict(f"window run {run_id} is {status}; retry later", run_id=run_id)
            if status == "failed" and record.get("permanent", True):
                raise RunFailed(
                    record.get("reason") or f"window run {run_id} failed",
                    status=int(record.get("error_status") or 422),
                    run_id=run_id,
                )
            try:
                _, run_etag = self.registry.update_run(
                    run_id,
                    run_etag,
                    status="claimed",
                    reason=None,
                    attempt=int(record.get("attempt", 1)) + 1,
                    lease_expires=time.time() + lease,
                )
            except PreconditionFailed:
                raise Conflict(
                    f"window run {run_id} was taken over; retry", run_id=run_id
                ) from None
        try:
            with Lease(self.registry, run_id, run_etag, lease) as held:
                return self._train_window(stream, msg, held)
        except RunTakenOver:  # another attempt holds the window now: it records the outcome
            raise
        except KmlError as e:
            self._fail(run_id, e)
            raise
        except Exception as e:
            log.exception("window failed", extra={"fields": {"run": run_id}})
            error = KmlError(f"window training failed: {type(e).__name__}", status=500)
            self._fail(run_id, error)
            raise error from None

    def _train_window(
        self, stream: dict[str, Any], msg: ControlMessage, lease: Lease
    ) -> dict[str, Any]:
        run_id = lease.run_id
        deployment = self.registry.get_deployment(stream["deployment_id"])
        seed = deployment.get("seed")
        if seed is None:
            seed = int(hashlib.sha256(run_id.encode()).hexdigest()[:8], 16) % 2**31
        lease.update(status="running", seed=int(seed))
        data = dataset.load(self.settings, msg, int(seed), self.trainer.reader)
        held_out = data.test if len(data.test) else data.validation
        base = self._base_model(stream)
        load = self.registry.store.download_file
        promoted_scores = baseline_scores = None
        if stream.get("promoted") and len(held_out):  # test first: the promoted model as it is
            promoted_scores = score(base, deployment, held_out, load)
            baseline = stream.get("baseline") or stream["promoted"]
            baseline_scores = promoted_scores  # the frozen model: the stream's first promoted one
            if baseline["artifact"] != stream["promoted"]["artifact"]:
                frozen = {**base, "keras_file": baseline["artifact"]}
                baseline_scores = score(frozen, deployment, held_out, load)
        folder = base["name"]
        epochs = Deployment.from_dict(deployment).epochs
        publisher = self.trainer.publisher

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            lease.check()  # taken over: stop fitting, the other attempt finishes the window
            publisher.progress(run_id, msg.deployment_id, folder, epoch, epochs, metrics)

        trained = train_model(base, deployment, data, on_epoch, load)
        metrics = trained.metrics
        candidate_scores = metrics.get("test") or metrics.get("evaluated_on_validation")
        saved = save_artifacts(self.registry, run_id, folder, trained)
        key = metric_key(stream["metric"])
        candidate = (candidate_scores or {}).get(key)
        promoted = (promoted_scores or {}).get(key)
        promote = should_promote(candidate, promoted, stream["change"], stream["improvement"])
        if not stream.get("promoted") and candidate is None and len(held_out) == 0:
            promote = True  # nothing held out and nothing promoted: the first model serves
        window = {
            "index": len(stream["windows"]),
            "metric": stream["metric"],
            "candidate": candidate,
            "promoted": promoted,
            "candidate_scores": candidate_scores,
            "promoted_scores": promoted_scores,
            "baseline": (baseline_scores or {}).get(key),
            "promote": promote,
            "warm_start": (stream.get("promoted") or {}).get("model"),
            "held_out": len(held_out),
        }
        record = lease.update(
            status="succeeded",
            models={folder: {"model": stream["model"], **saved}},
            splits=data.sizes(),
            window=window,
            permanent=False,
        )
        log.info("window trained", extra={"fields": {"run": run_id, **window}})
        try:
            publisher.completed(record)
        except KmlError as e:
            log.warning("completed event not published", extra={"fields": {"reason": e.message}})
        return record

    def _fail(self, run_id: str, error: KmlError) -> None:
        try:
            current, etag = self.registry.get_run(run_id)
            if current.get("status") not in ("succeeded", "failed"):
                self.registry.update_run(
                    run_id,
                    etag,
                    status="failed",
                    reason=error.message,
                    error_status=error.status,
                    permanent=not error.retryable,
                )
        except KmlError as e:
            log.warning("window not marked failed", extra={"fields": {"reason": e.message}})

    # -- after the run is durable ---------------------------------------------------------------
    def _commit(
        self,
        stream_id: str,
        stream: dict[str, Any],
        etag: str,
        ranges: list[OffsetRange],
        run: dict[str, Any],
    ) -> dict[str, Any]:
        window = dict(run["window"])
        [result] = run["models"].values()
        artifact = result["artifacts"]["model.keras"]
        promoted = stream.get("promoted")
        baseline = stream.get("baseline") or promoted
        promotions = int(stream.get("promotions", 0))
        if window["promote"]:
            version = self._register(stream, run, artifact, promotions + 1)
            promoted = {
                "model": f"{stream['promoted_model_name']}@{version}",
                "run_id": run["run_id"],
                "artifact": artifact,
                "window": window["index"],
                "score": window["candidate"],
            }
            promotions += 1
            baseline = baseline or promoted  # the first promoted model stays the frozen one
        cursor = {**stream["cursor"], **{str(r.partition): r.end for r in ranges}}
        entry = {
            **window,
            "run_id": run["run_id"],
            "ranges": [str(r) for r in ranges],
            "records": sum(r.count for r in ranges),
            "trained_at": time.time(),
        }
        try:
            self.registry.update_stream(
                stream_id,
                etag,
                cursor=cursor,
                windows=[*stream["windows"], entry],
                promoted=promoted,
                baseline=baseline,
                promotions=promotions,
                last_data=time.time(),
            )
        except PreconditionFailed:
            current, _ = self.registry.get_stream(stream_id)
            if any(w.get("run_id") == run["run_id"] for w in current.get("windows", [])):
                return {"stream_id": stream_id, "window": entry, "duplicate": True}
            raise Conflict(f"stream {stream_id} changed during the window; retry") from None
        if window["promote"]:
            self._announce(stream, promoted, entry)
        self._plot(stream, [*stream["windows"], entry])
        return {"stream_id": stream_id, "window": entry, "promoted": promoted}

    def _plot(self, stream: dict[str, Any], windows: list[dict[str, Any]]) -> None:
        """``streams/<id>/stream.png``: the metric per window, frozen vs online, promotions
        marked (``kml streams show`` links it); a plot not written is logged, nothing else."""
        try:
            png = stream_png(windows, stream["metric"], f"stream {stream['id']}")
            key = self.registry.stream_plot_key(stream["id"])
            self.registry.store.put(key, png, content_type="image/png")
        except Exception as e:  # the window is committed; only its picture is missing
            log.warning("stream plot not written", extra={"fields": {"reason": str(e)[:200]}})

    def _register(self, stream: dict[str, Any], run: dict[str, Any], artifact: str, version: int):
        """The promoted model as a registry version (a redelivery finds the same version)."""
        name = stream["promoted_model_name"]
        base = self.registry.get_model_ref(stream["model"])
        definition = {
            k: base.get(k)
            for k in ("keras_json", "compile", "input_shape", "output_shape", "param_count")
            if base.get(k) is not None
        }
        definition.update(
            version=version,
            description=f"stream {stream['id']} window {run['window']['index']}",
            stream_id=stream["id"],
            run_id=run["run_id"],
        )
        try:
            self.registry.get_model(name, version)
            return version
        except NotFound:
            pass
        body = self.registry.store.get(artifact).body
        try:
            self.registry.register_model(name, definition, keras_file=body)
        except Conflict:
            pass  # a concurrent delivery registered this version first
        return version

    def _announce(self, stream: dict[str, Any], promoted: dict[str, Any], entry: dict) -> None:
        data = {"stream_id": stream["id"], "deployment_id": stream["deployment_id"], **promoted}
        data["metric"] = stream["metric"]
        data["previous_score"] = entry.get("promoted")
        event = events.new_event(events.MODEL_PROMOTED, SOURCE, data, subject=stream["id"])
        try:
            self.trainer.publisher.producer.publish_event(
                self.settings.results_topic, event, key=stream["id"], wait=True
            )
        except KmlError as e:  # the pointer moved durably; only the notice is lost
            log.warning("promoted event not published", extra={"fields": {"reason": e.message}})


def _transient(error: KmlError | None) -> bool:
    """A fault that may heal (5xx, 429...), not a window another attempt holds (409)."""
    return error is not None and error.retryable and not isinstance(error, Conflict)
