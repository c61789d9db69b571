"""Helpers of the training fault tests: real train processes (gunicorn, as ``kml dev up`` runs
them), a sender that delivers a control record as KafkaSource does and retries it as the
dispatcher does, and a watcher of the results topic."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from kafkaml.kafka import ensure_topic
from kafkaml.settings import Settings
from kafkaml.sink import RawSink
from kml.dev.procs import free_port, gunicorn_argv
from kml.dev.services import GunicornFunction
from storage.registry import Registry
from tests.fakes import tiny_model_json
from tests.functions.train.conftest import consume_all, digits, kafkasource_request

ARTIFACTS = 6
"""Files one trained model leaves: model.keras, model.tflite, metrics, history, two plots."""


class TrainProcess(GunicornFunction):
    """The train function under gunicorn on a free port: ``workers`` processes of ``threads``."""

    def __init__(self, settings: Settings, workers: int = 1, threads: int = 4) -> None:
        super().__init__(settings, "train", free_port(), start_timeout_s=120)
        self.workers, self.threads = workers, threads

    def argv(self) -> list[str]:
        return gunicorn_argv("train", self.port, threads=self.threads, workers=self.workers)

    def kill(self) -> None:
        """SIGKILL the process group this test started (master and workers): a pod OOM-killed."""
        pid = self.proc.pid()
        assert pid is not None, "the train process is not running"
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.proc.pid() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        self.proc.pid_file.unlink(missing_ok=True)


def deployment(registry: Registry, unique: str, epochs: int) -> str:
    """A 64 -> 16 -> 10 digits classifier (hand-written Keras JSON) and its deployment."""
    name = f"digits-{unique}"
    registry.register_model(
        name,
        {
            "format": "keras_json",
            "keras_json": tiny_model_json(features=64, hidden=16, classes=10),
            "compile": {
                "optimizer": "adam",
                "loss": "sparse_categorical_crossentropy",
                "metrics": ["accuracy"],
            },
        },
    )
    record = {"models": [name], "batch_size": 32, "epochs": epochs, "seed": 7}
    return registry.create_deployment(record)["id"]


def control_record(settings: Settings, deployment_id: str, unique: str, records: int):
    """``records`` digits on a fresh topic and their control message, consumed back from the
    control topic as KafkaSource would see it."""
    x, y = digits()
    sink = RawSink(
        settings.kafka_bootstrap,
        f"data-{unique}",
        deployment_id,
        data_type="uint8",
        label_type="uint8",
        data_reshape="64",
        label_reshape="1",
        test_rate=0.2,
        control_topic=settings.control_topic,
    )
    sink.send_batch(x[:records].reshape(records, 64), y[:records])
    control = sink.close()
    [record] = consume_all(settings.kafka_bootstrap, settings.control_topic)
    return control, record


def deliver(address: str, record, token: str, timeout_s: float = 300) -> tuple[int, Any]:
    """One delivery as KafkaSource makes it; ``(0, reason)`` when the connection broke."""
    headers, body = kafkasource_request(record)
    headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{address}/", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            return reply.status, json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
    except OSError as e:  # reset or refused: the pod died under the request
        return 0, f"{type(e).__name__}: {e}"


@dataclass
class Dispatcher:
    """Plays the dispatcher: delivers until an answer that is not retried (or the deadline);
    keeps every answer. ``delay_s`` stands for the backoff (the real one is 4..64 s)."""

    address: str
    record: Any
    token: str
    delay_s: float = 1.0
    answers: list[tuple[int, Any]] = field(default_factory=list)

    def until_done(self, deadline_s: float) -> tuple[int, Any]:
        end = time.monotonic() + deadline_s
        while True:
            status, body = deliver(self.address, self.record, self.token)
            self.answers.append((status, body))
            retried = status == 0 or status >= 500 or status in (404, 408, 409, 429)
            if not retried or time.monotonic() > end:
                return status, body
            time.sleep(self.delay_s)

    def statuses(self) -> list[int]:
        return [s for s, _ in self.answers]


class Results:
    """The results topic's training events, followed on a side thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        ensure_topic(settings.kafka_bootstrap, settings.results_topic, 1)
        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.kafka_bootstrap,
                "group.id": "fault-tests",
                "enable.auto.commit": False,
            }
        )
        consumer.assign([TopicPartition(self.settings.results_topic, 0, 0)])
        try:
            while not self._stop.is_set():
                for msg in consumer.consume(100, timeout=0.2):
                    if msg.error() is None:
                        with self._changed:
                            self.events.append(json.loads(msg.value()))
                            self._changed.notify_all()
        finally:
            consumer.close()

    def wait_for(self, test, timeout_s: float) -> dict[str, Any]:
        """The first event ``test`` accepts (waiting up to ``timeout_s``)."""
        end = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for event in self.events:
                    if test(event):
                        return event
                left = end - time.monotonic()
                assert left > 0, f"no such event in {timeout_s:g}s: {self.of()}"
                self._changed.wait(left)

    def of(self, run_id: str | None = None, kind: str = "") -> list[dict[str, Any]]:
        with self._changed:
            return [
                e
                for e in self.events
                if (run_id is None or e["data"].get("run_id") == run_id)
                and e["type"].endswith(kind)
            ]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def artifact_keys(registry: Registry, run_id: str) -> list[str]:
    return [k for k in registry.store.list(f"runs/{run_id}/") if not k.endswith("status.json")]


def runs_of(registry: Registry, deployment_id: str) -> list[dict[str, Any]]:
    return [r for r in registry.list_runs() if r.get("deployment_id") == deployment_id]
