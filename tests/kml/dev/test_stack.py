"""``kml dev up | status | down`` from a shell, and the stack's clear errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kafkaml.settings import Settings
from kml.dev import tools
from kml.dev.kafka_broker import KafkaBroker
from kml.dev.procs import Proc, StackError, free_port

KML = [sys.executable, "-m", "kml.cli"]


def _kml(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        KML + args, env={**os.environ, **env}, cwd=cwd, capture_output=True, text=True, timeout=240
    )


@pytest.mark.integration
def test_up_status_down_twice_keeps_data(tmp_path, stack):
    # The session stack already fetched and built the parts; this one gets its own ports.
    ports = {
        "KML_KAFKA_PORT": free_port(),
        "KML_KAFKA_CONTROLLER_PORT": free_port(),
        "KML_MINIO_PORT": free_port(),
        "KML_MINIO_CONSOLE_PORT": free_port(),
    }
    env = {k: str(v) for k, v in ports.items()}
    env.update(
        KML_KAFKA_BOOTSTRAP=f"127.0.0.1:{ports['KML_KAFKA_PORT']}",
        KML_S3_ENDPOINT=f"http://127.0.0.1:{ports['KML_MINIO_PORT']}",
        KML_STATE_DIR=str(tmp_path / "state"),
        KML_LOCAL_PARTS="infrastructure",
    )
    settings = Settings.from_env(env)

    for round_ in (1, 2):
        up = _kml(["dev", "up"], env, tmp_path)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "stack ready" in up.stdout
        status = _kml(["dev", "status"], env, tmp_path)
        assert status.returncode == 0, status.stdout
        assert "kafka" in status.stdout and "minio" in status.stdout and " no " not in status.stdout

        from confluent_kafka import Consumer, Producer

        from storage.objects import ObjectStore

        store = ObjectStore.from_settings(settings)
        if round_ == 1:
            producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
            producer.produce("kept", b"written before down")
            assert producer.flush(30) == 0
            store.put("kept/object", b"still here")
        else:
            assert store.get("kept/object").body == b"still here"
            consumer = Consumer(
                {
                    "bootstrap.servers": settings.kafka_bootstrap,
                    "group.id": "k",
                    "auto.offset.reset": "earliest",
                }
            )
            consumer.subscribe(["kept"])
            values = []
            for _ in range(30):
                msg = consumer.poll(1)
                if msg is not None and not msg.error():
                    values.append(msg.value())
                    break
            consumer.close()
            assert values == [b"written before down"]

        down = _kml(["dev", "down"], env, tmp_path)
        assert down.returncode == 0 and "kafka" in down.stdout
        assert _kml(["dev", "status"], env, tmp_path).returncode == 1

    purge = _kml(["dev", "down", "--purge"], env, tmp_path)
    assert purge.returncode == 0 and not (tmp_path / "state").exists()


def test_taken_port_names_the_port_and_the_setting(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(
            state_dir=str(tmp_path), kafka_port=port, kafka_controller_port=free_port()
        )
        with pytest.raises(StackError) as e:
            KafkaBroker(settings).start()
    assert str(port) in str(e.value) and "KML_KAFKA_PORT" in str(e.value)


def test_missing_tool_names_what_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(StackError, match="`java` was not found.*Java 17"):
        tools.check_java()
    with pytest.raises(StackError, match="`go` was not found.*Go 1.24"):
        tools.check_go()


def test_a_part_that_dies_at_start_shows_its_log_tail(tmp_path):
    proc = Proc("broken", tmp_path)
    proc.start(["sh", "-c", "echo 'config error: no such listener'; exit 3"])
    with pytest.raises(StackError) as e:
        proc.wait_until(lambda: False, "the broken part to listen", timeout=10)
    assert "died while waiting for the broken part to listen" in str(e.value)
    assert "config error: no such listener" in str(e.value)


def test_a_bounded_wait_says_what_it_waited_for(tmp_path):
    proc = Proc("slow", tmp_path)
    proc.start(["sleep", "30"])
    try:
        with pytest.raises(StackError, match="timed out after 1s waiting for the slow part"):
            proc.wait_until(lambda: False, "the slow part", timeout=1)
    finally:
        assert proc.stop(timeout=5)
    assert proc.pid() is None
