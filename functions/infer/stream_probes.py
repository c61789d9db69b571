"""Stream mode's side thread: ``/metrics`` and the health probes Kubernetes asks, and the
stream's own metrics, in the same registry as the event path's."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram

from functions.infer.metrics import InferMetrics
from kafkaml.errors import Unavailable

STALLED_AFTER_S = 120.0
"""Liveness fails when the loop has not come round for this long (a poll waits well under a
second; a batch being retried wakes every 0.1 s)."""
_RECORD_BUCKETS = (1, 10, 100, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000)
_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class StreamMetrics:
    """Records by outcome, records per batch, seconds per batch, retried batches, partitions."""

    def __init__(self, metrics: InferMetrics) -> None:
        self.base = metrics
        registry = metrics.registry
        self.records = Counter(
            "kml_infer_stream_records",
            "Records delivered and committed, by outcome (predicted, dead_lettered).",
            ["outcome"],
            registry=registry,
        )
        self.batch_records = Histogram(
            "kml_infer_stream_batch_records",
            "Records per polled batch.",
            buckets=_RECORD_BUCKETS,
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "kml_infer_stream_batch_seconds",
            "Seconds from a poll's return to its batch's acknowledged outputs.",
            buckets=_SECONDS_BUCKETS,
            registry=registry,
        )
        self.assigned = Gauge(
            "kml_infer_stream_assigned_partitions",
            "Input partitions this consumer holds now.",
            registry=registry,
        )
        self.retries = Counter(
            "kml_infer_stream_retried_records",
            "Records of batches rewound to be predicted again, by error kind.",
            ["kind"],
            registry=registry,
        )

    def batch(self, records: int, dead: int, seconds: float) -> None:
        self.records.labels(outcome="predicted").inc(records - dead)
        if dead:
            self.records.labels(outcome="dead_lettered").inc(dead)
            self.base.errors.labels(kind="undecodable_record").inc(dead)
        self.batch_records.observe(records)
        self.batch_seconds.observe(seconds)

    def retried(self, records: int, kind: str) -> None:
        self.retries.labels(kind=kind).inc(records)
        self.base.errors.labels(kind=kind).inc()


class Probed(Protocol):
    metrics: StreamMetrics
    heartbeat: float
    """``time.monotonic()`` of the loop's last turn."""

    def check_ready(self) -> None:
        """Raise ``Unavailable`` while the worker cannot stream."""


def serve_probes(host: str, port: int, worker: Probed) -> ThreadingHTTPServer:
    """Serve ``/metrics``, ``/health/liveness`` and ``/health/readiness`` on a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == "/metrics":
                self._send(200, worker.metrics.base.render(), worker.metrics.base.content_type)
            elif self.path == "/health/liveness":
                stalled = time.monotonic() - worker.heartbeat
                if stalled > STALLED_AFTER_S:
                    self._json(503, {"error": f"the stream loop stalled {stalled:.0f}s ago"})
                else:
                    self._json(200, {"status": "alive"})
            elif self.path == "/health/readiness":
                try:
                    worker.check_ready()
                except Unavailable as e:
                    self._json(503, e.to_dict())
                else:
                    self._json(200, {"status": "ready"})
            else:
                self._json(404, {"error": f"no route {self.path}", "kind": "not_found"})

        def _json(self, status: int, body: dict[str, Any]) -> None:
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # probes are not worth a line
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="kml-stream-probes", daemon=True).start()
    return server
