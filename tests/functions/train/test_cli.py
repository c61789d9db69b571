"""``kml train`` follows a real run; ``kml runs show``; ``kml datasources reuse`` retrains."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from kafkaml.wire import parse_control_message
from kml.cli import app
from kml.commands.training import load_data
from tests.functions.train.conftest import consume_all, digits

pytestmark = pytest.mark.integration


def _bridge(harness, count: int, replies: list) -> threading.Thread:
    """Plays KafkaSource: waits for ``count`` control records and delivers the newest."""

    def run() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                records = consume_all(
                    harness.settings.kafka_bootstrap, harness.settings.control_topic, timeout_s=2
                )
            except Exception:
                records = []
            if len(records) >= count:
                replies.append(harness.deliver(records[count - 1]))
                return
            time.sleep(0.5)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_train_follow_show_and_reuse(harness, monkeypatch, tmp_path, unique):
    for name, value in harness.settings.to_env().items():
        monkeypatch.setenv(name, value)
    x, y = digits()
    data = tmp_path / "digits.npz"
    np.savez(data, x=x[:400], y=y[:400])
    deployment = harness.deployment(epochs=1)
    replies: list = []
    bridge = _bridge(harness, 1, replies)
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--deployment",
            deployment,
            "--data",
            str(data),
            "--topic",
            f"cli-{unique}",
            "--test-rate",
            "0.25",
            "--timeout",
            "120",
        ],
    )
    bridge.join(10)
    assert result.exit_code == 0, result.output
    assert replies and replies[0].status == 200
    run = replies[0].body
    assert f"run {run['run_id']}: succeeded" in result.output
    assert "model.tflite" in result.output and "X-Amz-Signature" in result.output

    other = harness.deployment(epochs=1)
    bridge = _bridge(harness, 2, replies)
    result = CliRunner().invoke(
        app, ["datasources", "reuse", run["datasource_id"], "--deployment", other]
    )
    bridge.join(60)
    assert result.exit_code == 0, result.output
    [_, reused] = consume_all(harness.settings.kafka_bootstrap, harness.settings.control_topic)
    message = parse_control_message(reused.value(), reused.key())
    assert message.deployment_id == other and message.ranges
    assert replies[1].status == 200 and replies[1].body["deployment_id"] == other
    assert replies[1].body["run_id"] != run["run_id"]
    assert replies[1].body["datasource_id"] == run["datasource_id"]

    missing = CliRunner().invoke(app, ["runs", "show", "run-does-not-exist"])
    assert missing.exit_code == 1 and "no run" in missing.output


def test_load_data_npz_and_csv(tmp_path):
    np.savez(tmp_path / "a.npz", features=np.ones((3, 2)), labels=np.arange(3))
    x, y = load_data(tmp_path / "a.npz")
    assert x.shape == (3, 2) and y.tolist() == [0, 1, 2]
    (tmp_path / "b.csv").write_text("f1,f2,label\n0.5,1.5,1\n2.0,3.0,0\n")
    x, y = load_data(tmp_path / "b.csv")
    assert x.tolist() == [[0.5, 1.5], [2.0, 3.0]] and y.dtype == np.int64


def test_runs_retry_trains_a_permanently_failed_run_once_its_data_is_there(
    harness, monkeypatch, unique
):
    """The range's end was beyond the high watermark (422, permanent: a redelivery repeats it);
    once the records are there, `kml runs retry` makes the run retryable and publishes its
    control message again: the same run id trains (attempt 2) and keeps the old reason."""
    for name, value in harness.settings.to_env().items():
        monkeypatch.setenv(name, value)
    settings, registry = harness.settings, harness.registry
    deployment = harness.deployment(epochs=1)
    topic = f"retry-{unique}"
    x, y = digits()
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for i in range(100):
        producer.produce(topic, key=y[i].tobytes(), value=x[i].tobytes(), partition=0)
    assert producer.flush(30) == 0
    body = {
        "topic": f"{topic}:0:0:200",
        "input_format": "RAW",
        "input_config": {"data_type": "uint8", "label_type": "uint8", "data_reshape": "8 8"},
        "test_rate": 0.2,
    }
    sent_long_ago = {
        "ce-specversion": "1.0",
        "ce-id": f"old-{unique}",
        "ce-source": "/tests",
        "ce-type": "kml.training.request",
        "ce-time": "2020-01-01T00:00:00Z",  # past the arrival grace: the verdict is permanent
        "content-type": "application/json",
    }
    request = json.dumps({**body, "deployment_id": deployment}).encode()
    failed = harness.post(sent_long_ago, request)
    assert failed.status == 422 and "beyond the high watermark" in failed.body["error"]
    run_id = failed.body["run_id"]
    assert harness.post(sent_long_ago, request).status == 422  # permanent: repeated, not retried

    busy = CliRunner().invoke(app, ["runs", "retry", f"run-not-{unique}"])
    assert busy.exit_code == 1 and "no run" in busy.output
    for i in range(100, 200):
        producer.produce(topic, key=y[i].tobytes(), value=x[i].tobytes(), partition=0)
    assert producer.flush(30) == 0
    replies: list = []
    bridge = _bridge(harness, 1, replies)
    result = CliRunner().invoke(app, ["runs", "retry", run_id])
    bridge.join(120)
    assert result.exit_code == 0, result.output
    assert "it had failed: offset ranges not available" in result.output
    assert replies and replies[0].status == 200, replies and replies[0].body
    run, _ = registry.get_run(run_id)
    assert (run["status"], run["attempt"], run["splits"]["test"]) == ("succeeded", 2, 40)
    assert run["retries"][0]["error_status"] == 422
    again = CliRunner().invoke(app, ["runs", "retry", run_id])
    assert again.exit_code == 1 and "succeeded: nothing to retry" in again.output


def test_train_online_starts_a_stream_that_trains_the_data_sent_after_it(
    harness, monkeypatch, tmp_path, unique
):
    from tests.functions.train.test_online import _mine, _tick

    for name, value in harness.settings.to_env().items():
        monkeypatch.setenv(name, value)
    x, y = digits()
    data = tmp_path / "digits.npz"
    np.savez(data, x=x[:300], y=y[:300])
    deployment = harness.deployment(epochs=1)
    topic = f"cli-online-{unique}"
    argv = ["train", "--online", "-d", deployment, "--data", str(data), "--topic", topic]
    result = CliRunner().invoke(app, [*argv, "--metric", "val_accuracy", "--change", "up"])
    assert result.exit_code == 0, result.output
    assert f"online stream for deployment {deployment} on {topic}" in result.output

    [control] = consume_all(harness.settings.kafka_bootstrap, harness.settings.control_topic)
    message = parse_control_message(control.value(), control.key())
    assert message.incremental and message.topic == topic and message.total_msg is None
    assert message.online["monitoring_metric"] == "val_accuracy"
    assert message.online["change"] == "up" and message.online["stream_timeout"] == 60000

    started = harness.deliver(control)  # delivered after the data: the stream still has it all
    assert started.status == 200, started.body
    assert started.body["start"] == {"0": 0, "1": 0, "2": 0}
    window = _mine(_tick(harness, f"tick-cli-{unique}"), started.body["id"])["window"]
    assert sum(int(r.split(":")[3]) - int(r.split(":")[2]) for r in window["ranges"]) == 300

    bad = CliRunner().invoke(app, [*argv, "--change", "sideways"])
    assert bad.exit_code == 1
    assert "change: 'sideways' must be 'up' or 'down'" in " ".join(bad.output.split())
    assert len(consume_all(harness.settings.kafka_bootstrap, harness.settings.control_topic)) == 1
