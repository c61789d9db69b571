"""Online training on the real stack: Kafka-ML's online control message starts a stream, ticks
train exact windows warm-started from the promoted model, a redelivered tick trains nothing."""

from __future__ import annotations

import json
import time

import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from functions.train.windows import should_promote, window_run_id
from kafkaml.kafka import end_offsets, ensure_topic, follow
from kafkaml.wire import OffsetRange
from kml.cli import app
from tests.functions.train.conftest import consume_all, digits
from tests.functions.train.online_control import online_control_record, send_online_control

pytestmark = pytest.mark.integration


def _publish(bootstrap: str, topic: str, x, y, partitions: int = 2) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(len(x)):
        producer.produce(topic, key=y[i].tobytes(), value=x[i].tobytes(), partition=i % partitions)
    assert producer.flush(30) == 0


def _tick(harness, event_id: str, ping: bool = False):
    return harness.post(
        {
            "ce-specversion": "1.0",
            "ce-id": event_id,
            "ce-source": "/tests/ticker",
            "ce-type": "dev.knative.sources.ping" if ping else "kml.stream.tick",
            "content-type": "application/json",
        },
        b"{}",
    )


def _mine(reply, stream_id: str) -> dict:
    assert reply.status == 200, reply.body
    [entry] = [s for s in reply.body["streams"] if s["stream_id"] == stream_id]
    return entry


def test_online_stream_trains_exact_windows_and_promotes_by_the_rule(harness, unique, monkeypatch):
    settings, registry = harness.settings, harness.registry
    bootstrap = settings.kafka_bootstrap
    deployment = harness.deployment(deployment_id=str(200 + int(unique[:4], 16) % 50), epochs=2)
    topic = f"live-{unique}"
    ensure_topic(bootstrap, topic, partitions=2)
    x, y = digits()
    _publish(bootstrap, topic, x[:40], y[:40])  # before the control message: not the stream's

    control = online_control_record(
        harness.settings, deployment, topic, monitoring_metric="val_accuracy", change="up"
    )
    first = harness.deliver(control)
    assert first.status == 200, first.body
    stream = first.body
    assert stream["status"] == "open" and stream["topic"] == topic
    assert stream["start"] == stream["cursor"] == {"0": 20, "1": 20}
    assert (stream["metric"], stream["change"], stream["improvement"]) == (
        "val_accuracy",
        "up",
        0.05,
    )
    assert stream["window_seconds"] == 60.0 and stream["indefinite"] is False
    again = harness.deliver(control)  # a redelivered control message finds the same stream
    assert again.status == 200 and again.body["id"] == stream["id"]
    sid = stream["id"]
    try:
        idle = _mine(_tick(harness, f"tick-idle-{unique}"), sid)
        assert idle["window"] is None and idle["status"] == "open"

        _publish(bootstrap, topic, x[40:240], y[40:240])
        w0 = _mine(_tick(harness, f"tick-0-{unique}", ping=True), sid)["window"]
        assert sorted(w0["ranges"]) == [f"{topic}:0:20:120", f"{topic}:1:20:120"]
        assert w0["promote"] is True and w0["promoted"] is None  # the first window promotes

        # records arriving between ticks: two batches, a tick after each
        _publish(bootstrap, topic, x[240:440], y[240:440])
        tick = f"tick-1-{unique}"
        w1 = _mine(_tick(harness, tick), sid)["window"]
        after_w1, _ = registry.get_stream(sid)
        _publish(bootstrap, topic, x[440:640], y[440:640])
        redelivered = _mine(_tick(harness, tick), sid)  # same tick again: only the new records
        w2 = redelivered["window"]
        assert _mine(_tick(harness, tick), sid)["window"] is None  # and then nothing at all

        stream, _ = registry.get_stream(sid)
        windows = stream["windows"]
        assert [w["run_id"] for w in windows] == [w0["run_id"], w1["run_id"], w2["run_id"]]
        # exact: per partition the windows tile [start, end) with no gap and no overlap
        ends = end_offsets(bootstrap, topic)
        assert stream["cursor"] == {str(p): e for p, e in ends.items()} == {"0": 320, "1": 320}
        for p in (0, 1):
            spans = [
                tuple(int(v) for v in r.split(":")[2:])
                for w in windows
                for r in w["ranges"]
                if r.split(":")[1] == str(p)
            ]
            assert spans[0][0] == 20 and spans[-1][1] == 320
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
        assert sum(w["records"] for w in windows) == 600
        runs = [r for r in registry.list_runs() if r.get("stream_id") == sid]
        assert len(runs) == 3 and all(r["status"] == "succeeded" for r in runs)
        assert sum(r["records"] for r in runs) == 600  # every record trained exactly once

        # prequential: after the first window both models are scored on the same held-out data
        for w in windows[1:]:
            assert w["promoted"] is not None and w["candidate"] is not None
            assert w["held_out"] == 40 and w["warm_start"] is not None
        # promotion follows the rule, and the pointer is the last promoted window
        best = None
        for w in windows:
            assert w["promote"] is should_promote(w["candidate"], w["promoted"], "up", 0.05)
            best = w if w["promote"] else best
        promotions = [w for w in windows if w["promote"]]
        assert stream["promotions"] == len(promotions)
        name = stream["promoted_model_name"]
        assert stream["promoted"]["model"] == f"{name}@{len(promotions)}"
        assert stream["promoted"]["run_id"] == best["run_id"]
        assert registry.list_model_versions(name) == list(range(1, len(promotions) + 1))
        model = registry.get_model(name, len(promotions))
        assert model["format"] == "keras_file" and model["run_id"] == best["run_id"]
        announced = [
            json.loads(m.value()) for m in follow(bootstrap, settings.results_topic, {0: 0}, 3.0)
        ]
        promoted_events = [e for e in announced if e["type"] == "kml.model.promoted"]
        assert [e["data"]["model"] for e in promoted_events] == [
            f"{name}@{i}" for i in range(1, len(promotions) + 1)
        ]

        # the window's run is durable but the stream's commit was lost (a crash between the
        # two): the next tick finds the run, trains nothing, and commits the same window
        run2, _ = registry.get_run(w2["run_id"])
        _, etag = registry.get_stream(sid)
        lost = {k: after_w1[k] for k in ("cursor", "windows", "promoted", "promotions")}
        registry.update_stream(sid, etag, **lost)
        replayed = _mine(_tick(harness, f"tick-replay-{unique}"), sid)["window"]
        assert replayed["run_id"] == w2["run_id"] and replayed["ranges"] == w2["ranges"]
        assert registry.get_run(w2["run_id"])[0]["updated"] == run2["updated"]  # not retrained
        again_stream, _ = registry.get_stream(sid)
        assert again_stream["cursor"] == stream["cursor"]
        assert [w["run_id"] for w in again_stream["windows"]] == [w["run_id"] for w in windows]
        assert again_stream["promoted"]["model"] == stream["promoted"]["model"]
        assert registry.list_model_versions(name) == list(range(1, len(promotions) + 1))

        # kml streams: lag, windows and their metrics, promotions; stop ends the ticks' work
        for name, value in settings.to_env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("COLUMNS", "250")
        from kml.commands.common import console as cli_console  # made before COLUMNS was set

        monkeypatch.setattr(cli_console, "_width", 250)
        _publish(bootstrap, topic, x[640:650], y[640:650])
        runner = CliRunner()
        shown = runner.invoke(app, ["streams", "show", sid])
        assert shown.exit_code == 0, shown.output
        text = " ".join(shown.output.split())  # however the console wrapped its lines
        assert "lag 10" in text and f"{stream['promotions']} promotion(s)" in text
        assert all(w["run_id"] in shown.output for w in windows)
        assert f"{windows[1]['candidate']:.4f}" in shown.output
        listed = runner.invoke(app, ["streams", "list"])
        assert listed.exit_code == 0 and sid in listed.output, listed.output
        stopped = runner.invoke(app, ["streams", "stop", sid])
        assert stopped.exit_code == 0, stopped.output
        tick = _tick(harness, f"tick-stopped-{unique}")
        assert tick.status == 200 and sid not in json.dumps(tick.body)  # stopped: not trained
        assert len(registry.get_stream(sid)[0]["windows"]) == 3
    finally:
        current, etag = registry.get_stream(sid)
        if current["status"] == "open":
            registry.update_stream(sid, etag, status="stopped")


def test_a_stream_closes_after_its_timeout_without_data(harness, unique):
    deployment = harness.deployment(deployment_id=str(100 + int(unique[:4], 16) % 50), epochs=1)
    topic = f"quiet-{unique}"
    ensure_topic(harness.settings.kafka_bootstrap, topic, partitions=1)
    reply = harness.deliver(
        online_control_record(harness.settings, deployment, topic, stream_timeout=1)
    )
    assert reply.status == 200, reply.body
    sid = reply.body["id"]

    time.sleep(0.5)
    closed = _mine(_tick(harness, f"tick-quiet-{unique}"), sid)
    assert closed["status"] == "closed" and closed["window"] is None
    assert harness.registry.get_stream(sid)[0]["status"] == "closed"


def test_records_sent_right_after_the_control_message_belong_to_the_stream(harness, unique):
    """Kafka-ML's OnlineRawSink writes the control message, then the data at once: the stream
    starts where the topic ended when the control message was written, however late the
    control message is handled."""
    bootstrap = harness.settings.kafka_bootstrap
    deployment = harness.deployment(deployment_id=str(150 + int(unique[:4], 16) % 50), epochs=1)
    topic = f"eager-{unique}"
    ensure_topic(bootstrap, topic, partitions=2)
    x, y = digits()
    _publish(bootstrap, topic, x[:20], y[:20])  # before the control message: not the stream's
    time.sleep(0.05)
    control = online_control_record(harness.settings, deployment, topic)  # written, not handled yet
    time.sleep(0.05)
    _publish(bootstrap, topic, x[20:60], y[20:60])  # the sink's data, right after

    reply = harness.deliver(control)  # handled only now, with all 60 records on the topic

    assert reply.status == 200, reply.body
    assert reply.body["start"] == reply.body["cursor"] == {"0": 10, "1": 10}
    window = _mine(_tick(harness, f"tick-eager-{unique}"), reply.body["id"])["window"]
    assert sorted(window["ranges"]) == [f"{topic}:0:10:30", f"{topic}:1:10:30"]  # all 40, once


def test_a_stream_whose_window_is_held_does_not_hold_up_the_others(harness, unique):
    """Another attempt holds one stream's window (a live lease): the tick answers 200, that
    stream is reported skipped (409) with its cursor where it was, the other stream trains;
    once the lease lapses the next tick trains the held window."""
    settings, registry = harness.settings, harness.registry
    bootstrap = settings.kafka_bootstrap
    deployment = harness.deployment(epochs=1)
    held_topic, free_topic = f"held-{unique}", f"free-{unique}"
    for topic in (held_topic, free_topic):
        ensure_topic(bootstrap, topic, partitions=1)
        send_online_control(settings, deployment, topic, kafka_ml_key=False)
    streams = {}
    for control in consume_all(bootstrap, settings.control_topic):
        reply = harness.deliver(control)
        assert reply.status == 200, reply.body
        streams[reply.body["topic"]] = reply.body["id"]
    held, free = streams[held_topic], streams[free_topic]
    x, y = digits()
    for topic in (held_topic, free_topic):
        _publish(bootstrap, topic, x[:40], y[:40], partitions=1)
    held_run = window_run_id(held, [OffsetRange(held_topic, 0, 0, 40)])
    registry.claim_run(
        held_run,
        {"deployment_id": deployment, "stream_id": held, "lease_expires": time.time() + 600},
    )
    try:
        tick = _tick(harness, f"tick-held-{unique}")
        skipped = _mine(tick, held)  # the tick's status is 200: asserted in _mine
        assert skipped["skipped"] == "held" and skipped["status"] == 409, skipped
        assert held_run in skipped["error"]
        assert _mine(tick, free)["window"]["ranges"] == [f"{free_topic}:0:0:40"]
        assert registry.get_stream(held)[0]["cursor"] == {"0": 0}
        assert registry.get_stream(free)[0]["cursor"] == {"0": 40}

        run, etag = registry.get_run(held_run)  # the other attempt died: its lease lapses
        registry.update_run(held_run, etag, lease_expires=time.time() - 1)
        later = _tick(harness, f"tick-lapsed-{unique}")
        assert _mine(later, held)["window"]["ranges"] == [f"{held_topic}:0:0:40"]
        assert _mine(later, free)["window"] is None  # trained once, not again
        assert registry.get_run(held_run)[0]["attempt"] == 2
        assert registry.get_stream(held)[0]["cursor"] == {"0": 40}
    finally:
        for sid in (held, free):
            current, etag = registry.get_stream(sid)
            if current["status"] == "open":
                registry.update_stream(sid, etag, status="stopped")
