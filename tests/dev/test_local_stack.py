"""``kml dev up`` as a whole: Kafka, MinIO, register, train, the bridge; ``down`` stops them all,
local inference processes included."""

from __future__ import annotations

import os
import sys

import pytest

from kafkaml.dev.bridge import read_status
from kafkaml.dev.procs import Proc, free_port, port_answers
from kafkaml.dev.stack import Stack
from kafkaml.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(tmp_path) -> Settings:
    kafka = free_port()
    return Settings.from_env(
        {k: v for k, v in os.environ.items() if k == "KML_CACHE_DIR"},
        state_dir=str(tmp_path / "state"),
        kafka_port=kafka,
        kafka_controller_port=free_port(),
        minio_port=(minio := free_port()),
        minio_console_port=free_port(),
        kafka_bootstrap=f"127.0.0.1:{kafka}",
        s3_endpoint=f"http://127.0.0.1:{minio}",
        bucket="kml-stack-test",
        register_port=free_port(),
        train_port=free_port(),
        infer_port=free_port(),
        local_parts="all",
    )


def test_up_starts_every_part_healthy_and_down_stops_them_all(settings, tmp_path):
    stack = Stack(settings)
    try:
        stack.up()
        status = {s.name: s for s in stack.status()}
        assert list(status) == ["kafka", "minio", "register", "train", "bridge", "inference"]
        assert all(s.healthy for s in status.values()), status
        bridge = read_status(settings.state_dir)
        sinks = {s["name"]: s["sink"] for s in bridge["sources"]}
        assert sinks == {
            "kml-models": f"http://127.0.0.1:{settings.register_port}",
            "kml-control": f"http://127.0.0.1:{settings.train_port}",
        }
        # A local inference process, as `kml deploy inference ID --local` leaves it.
        fake = Proc("infer", tmp_path / "state" / "infer-demo")
        fake.start([sys.executable, "-c", "import time; time.sleep(300)"])
        assert fake.pid() is not None
        pids = [s.pid for s in status.values() if s.name != "inference"]
    finally:
        stopped = stack.down()
    assert stopped == ["inference", "bridge", "train", "register", "minio", "kafka"]
    assert fake.pid() is None
    assert all(p.proc.pid() is None for p in stack.parts)
    assert not any(
        port_answers(port)
        for port in (
            settings.register_port,
            settings.train_port,
            settings.kafka_port,
            settings.minio_port,
        )
    )
    assert all(pid is not None for pid in pids)
