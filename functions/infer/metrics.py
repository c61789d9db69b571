"""Prometheus metrics of one infer process, in a registry of its own (one per app)."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class InferMetrics:
    """Requests by path and outcome, predictions, errors by kind, latency, load time, batch size."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, inference_id: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = {"inference": inference_id or "-"}
        self.requests = Counter(
            "kml_infer_requests",
            "Requests answered, by path (kafka, event, kserve) and outcome.",
            ["path", "outcome"],
            registry=self.registry,
        )
        self.predictions = Counter(
            "kml_infer_predictions",
            "Instances predicted (rows through the model).",
            registry=self.registry,
        )
        self.errors = Counter(
            "kml_infer_errors",
            "Failed requests by error kind.",
            ["kind"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "kml_infer_request_seconds",
            "Request latency by path.",
            ["path"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "kml_infer_batch_size",
            "Rows per model call (the micro-batcher's batches).",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.model_load_seconds = Gauge(
            "kml_infer_model_load_seconds",
            "Seconds spent fetching and loading the model.",
            registry=self.registry,
        )
        self.model_ready = Gauge(
            "kml_infer_model_ready",
            "1 once the model is loaded.",
            registry=self.registry,
        )
        self.info = Gauge(
            "kml_infer_info",
            "The inference deployment and model runtime this process serves.",
            ["inference", "runtime"],
            registry=self.registry,
        )
        self.model_version = Gauge(
            "kml_infer_model_version",
            "1 for the model version serving now (a stream's promoted version, or the run id).",
            ["version"],
            registry=self.registry,
        )
        self.model_swaps = Counter(
            "kml_infer_model_swaps",
            "New model versions made current (an inference following a stream).",
            registry=self.registry,
        )
        self.model_swap_failures = Counter(
            "kml_infer_model_swap_failures",
            "New model versions that did not load; the old version kept serving.",
            registry=self.registry,
        )
        self.model_swap_seconds = Gauge(
            "kml_infer_model_swap_load_seconds",
            "Seconds the last new version took to fetch, load and try before it was swapped in.",
            registry=self.registry,
        )
        self.pointer_checks = Counter(
            "kml_infer_pointer_checks",
            "Checks of a followed stream's promoted pointer, by outcome (unchanged, read, error).",
            ["outcome"],
            registry=self.registry,
        )
        self._labels = labels
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def serving_version(self, version: str) -> None:
        self.model_version.labels(version=version).set(1)

    def swapped(self, old: str, new: str, seconds: float) -> None:
        try:
            self.model_version.remove(old)
        except KeyError:  # never set (a version that served before metrics were read)
            pass
        self.model_version.labels(version=new).set(1)
        self.model_swaps.inc()
        self.model_swap_seconds.set(seconds)

    def swap_failed(self) -> None:
        self.model_swap_failures.inc()

    def pointer_checked(self, outcome: str) -> None:
        self.pointer_checks.labels(outcome=outcome).inc()

    def model_loaded(self, runtime: str, seconds: float) -> None:
        self.model_load_seconds.set(seconds)
        self.model_ready.set(1)
        self.info.labels(inference=self._labels["inference"], runtime=runtime).set(1)

    def observe_request(self, path: str, status: int, seconds: float, kind: str | None) -> None:
        outcome = "ok" if status < 400 else ("client_error" if status < 500 else "server_error")
        children = self._children.get((path, outcome))
        if children is None:  # labels() takes a lock and builds a key: once per path, outcome
            children = (
                self.requests.labels(path=path, outcome=outcome),
                self.latency.labels(path=path),
            )
            self._children[(path, outcome)] = children
        children[0].inc()
        children[1].observe(seconds)
        if kind is not None:
            self.errors.labels(kind=kind).inc()

    def observe_batch(self, rows: int) -> None:
        self.batch_size.observe(rows)
        self.predictions.inc(rows)

    def render(self) -> bytes:
        return generate_latest(self.registry)
