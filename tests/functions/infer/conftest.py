"""Integration fixtures for infer: a digits model trained in a child process, deployments in the
real MinIO, infer under real gunicorn, and helpers to publish and read Kafka records."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests
from confluent_kafka import Consumer, Producer, TopicPartition

from kafkaml.kafka import ensure_topic
from kafkaml.settings import Settings
from kml.dev.inference import gunicorn_argv, infer_env, threads_for
from kml.dev.procs import Proc, free_port
from storage.registry import Registry

ROOT = Path(__file__).resolve().parents[3]
MODEL = "digits"


@dataclass(frozen=True)
class Digits:
    """The trained model's files and the data it was trained on."""

    folder: Path
    inputs: np.ndarray
    labels: np.ndarray
    keras_predictions: np.ndarray


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Digits:
    out = tmp_path_factory.mktemp("digits-model")
    done = subprocess.run(
        [sys.executable, "-m", "tests.functions.infer.make_model", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return Digits(
        out,
        np.load(out / "inputs.npy"),
        np.load(out / "labels.npy"),
        np.load(out / "keras_predictions.npy"),
    )


@dataclass(frozen=True)
class Deployment:
    settings: Settings
    spec: dict

    @property
    def id(self) -> str:
        return self.spec["id"]


def deploy(
    stack: Settings,
    digits: Digits,
    cache_dir: Path,
    *,
    tflite: bool,
    partitions: int = 3,
    create_topics: bool = True,
) -> Deployment:
    """Upload the run's artifacts, create the inference spec and (unless told not to) its
    topics."""
    unique = uuid.uuid4().hex[:8]
    registry = Registry.from_settings(stack)
    registry.ensure_ready()
    run_id = f"run-{unique}"
    files = ["model.keras", "model.tflite"] if tflite else ["model.keras"]
    for filename in files:
        registry.store.put(
            registry.run_artifact_key(run_id, MODEL, filename),
            (digits.folder / filename).read_bytes(),
        )
    spec = registry.create_inference(
        {
            "id": f"inf-{unique}",
            "run_id": run_id,
            "model": MODEL,
            "input_format": "RAW",
            "input_config": {"data_type": "float32", "data_reshape": "8 8"},
            "input_topic": f"in-{unique}",
            "output_topic": f"out-{unique}",
            "min_scale": 0,
            "max_scale": 3,
            "target_concurrency": 16,
        }
    )
    settings = stack.replace(
        inference_id=spec["id"], dlq_topic=f"dlq-{unique}", model_cache_dir=str(cache_dir)
    )
    if create_topics:
        ensure_topic(stack.kafka_bootstrap, spec["input_topic"], partitions)
        ensure_topic(stack.kafka_bootstrap, spec["output_topic"], partitions)
        ensure_topic(stack.kafka_bootstrap, settings.dlq_topic, 1)
    return Deployment(settings, spec)


@dataclass
class Served:
    """An infer process under gunicorn, and what its readiness probe said while it started."""

    url: str
    proc: Proc
    spawned_at: float
    ready_at: float = 0.0
    statuses: list[int] = field(default_factory=list)
    token: str = ""
    """The stack's token the calls carry (scopes read and predict among them)."""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def predict(self, name: str, instances: list) -> requests.Response:
        return requests.post(
            f"{self.url}/v1/models/{name}:predict",
            json={"instances": instances},
            headers=self.headers,
            timeout=60,
        )

    def metrics(self) -> str:
        return requests.get(f"{self.url}/metrics", timeout=10).text


def serve(deployment: Deployment, home: Path, timeout_s: float = 240.0) -> Served:
    """Start gunicorn for ``deployment`` and poll readiness every 20 ms until it is 200."""
    port = free_port()
    proc = Proc("infer", home)
    served = Served(
        f"http://127.0.0.1:{port}", proc, time.monotonic(), token=deployment.settings.auth_token
    )
    proc.start(
        gunicorn_argv(port, threads_for(deployment.settings)),
        env=infer_env(deployment.settings, deployment.id),
        cwd=ROOT,
    )
    try:
        _wait_ready(served, timeout_s)
    except BaseException:
        proc.stop()
        raise
    return served


def _wait_ready(served: Served, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if served.proc.pid() is None:
            raise AssertionError("infer died:\n" + served.proc.log_file.read_text()[-3000:])
        try:
            status = requests.get(f"{served.url}/health/readiness", timeout=2).status_code
        except requests.RequestException:  # refused while booting, or slow while TF imports
            status = 0
        served.statuses.append(status)
        if status == 200:
            served.ready_at = time.monotonic()
            return
        time.sleep(0.02)
    raise AssertionError("infer not ready in time:\n" + served.proc.log_file.read_text()[-3000:])


def publish(bootstrap: str, topic: str, records: list[tuple[bytes, bytes | None, list]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for value, key, headers in records:
        producer.produce(topic, value=value, key=key, headers=headers or None)
    assert producer.flush(30) == 0


def read_topic(
    bootstrap: str, topic: str, expected: int, settle_s: float = 1.5, timeout_s: float = 60.0
) -> list:
    """Every record of ``topic``: waits for ``expected``, then ``settle_s`` more for extras."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    out: list = []
    deadline = time.monotonic() + timeout_s
    settle_until = None
    try:
        while time.monotonic() < deadline:
            out += [m for m in consumer.consume(1000, timeout=0.5) if m.error() is None]
            if len(out) >= expected:
                settle_until = settle_until or time.monotonic() + settle_s
                if time.monotonic() > settle_until:
                    break
    finally:
        consumer.close()
    return out
