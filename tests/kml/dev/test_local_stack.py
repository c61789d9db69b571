"""``kml dev up`` as a whole: Kafka, MinIO, register, train, the bridge (a register event
published to Kafka reaches the register function; Kafka-ML's default control topic exists and is
followed); ``down`` stops them all, local inference processes included."""

from __future__ import annotations

import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import requests
from confluent_kafka.admin import AdminClient

from kafkaml.events import MODEL_REGISTER, new_event
from kafkaml.kafka import ConfirmingProducer
from kafkaml.settings import Settings
from kml.dev.bridge import read_status
from kml.dev.procs import Proc, port_answers
from kml.dev.stack import Stack, isolated_settings
from tests.functions.register import keras_worker
from tests.functions.register.conftest import model_event

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(tmp_path) -> Settings:
    return isolated_settings(str(tmp_path / "state"), bucket="kml-stack-test", local_parts="all")


@pytest.fixture(scope="module")
def model_json() -> str:
    """A Keras model's JSON, built in a child process (no TensorFlow in the test process)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        return child.submit(keras_worker.tiny_model_json).result(timeout=300)


def register_through_kafka(settings: Settings, name: str, model_json: str) -> dict:
    """Publish a kml.model.register CloudEvent to the models topic; the bridge delivers it to
    the register function, whose read API then shows the model."""
    event = new_event(MODEL_REGISTER, "/tests/local-stack", model_event(name, model_json))
    producer = ConfirmingProducer(settings.kafka_bootstrap)
    producer.publish_event(settings.models_topic, event, key=name)
    url = f"http://127.0.0.1:{settings.register_port}/models/{name}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        r = requests.get(
            url, headers={"Authorization": f"Bearer {settings.auth_token}"}, timeout=10
        )
        if r.status_code == 200:
            return r.json()
        time.sleep(0.5)
    raise AssertionError(f"{name} never reached the register function through the bridge")


def test_up_starts_every_part_healthy_and_down_stops_them_all(settings, tmp_path, model_json):
    stack = Stack(settings)
    try:
        stack.up()
        status = {s.name: s for s in stack.status()}
        assert list(status) == [
            "kafka",
            "minio",
            "register",
            "train",
            "bridge",
            "dashboard",
            "inference",
        ]
        assert all(s.healthy for s in status.values()), status
        bridge = read_status(settings.state_dir)
        sinks = {s["name"]: s["sink"] for s in bridge["sources"]}
        assert sinks == {
            "kml-models": f"http://127.0.0.1:{settings.register_port}",
            "kml-control": f"http://127.0.0.1:{settings.train_port}",
        }
        control = next(s for s in bridge["sources"] if s["name"] == "kml-control")
        assert "KAFKA_ML_CONTROL_TOPIC" in control["topics"]
        topics = AdminClient({"bootstrap.servers": settings.kafka_bootstrap}).list_topics(
            timeout=10
        )
        assert {"kml-control", "KAFKA_ML_CONTROL_TOPIC", "kml-models"} <= set(topics.topics)
        record = register_through_kafka(settings, "via-kafka", model_json)
        assert record["name"] == "via-kafka" and record["version"] == 1
        for function in ("register", "train", "dashboard"):  # each with its own S3 key
            environ = Path(f"/proc/{status[function].pid}/environ").read_bytes().split(b"\0")
            assert f"KML_S3_ACCESS_KEY=kml-{function}".encode() in environ, function
        bridge_env = Path(f"/proc/{status['bridge'].pid}/environ").read_bytes().split(b"\0")
        assert b"KML_S3_ACCESS_KEY=" in bridge_env  # the bridge holds no S3 key at all
        # A local inference process, as `kml deploy inference ID --local` leaves it.
        fake = Proc("infer", tmp_path / "state" / "infer-demo")
        fake.start([sys.executable, "-c", "import time; time.sleep(300)"])
        assert fake.pid() is not None
        pids = [s.pid for s in status.values() if s.name != "inference"]
    finally:
        stopped = stack.down()
    assert stopped == ["inference", "dashboard", "bridge", "train", "register", "minio", "kafka"]
    assert fake.pid() is None
    assert all(p.proc.pid() is None for p in stack.parts)
    assert not any(
        port_answers(port)
        for port in (
            settings.register_port,
            settings.train_port,
            settings.dashboard_port,
            settings.kafka_port,
            settings.minio_port,
        )
    )
    assert all(pid is not None for pid in pids)
