"""A train process SIGKILLed while it fits an online stream's window (a pod OOM-killed): the
stream's cursor stays where it was, and once the dead window's lease lapsed the next tick trains
that same window exactly once and moves the cursor by exactly its records. Real broker, real
MinIO, real gunicorn."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from confluent_kafka import Producer

from kafkaml.kafka import ensure_topic
from storage.registry import Registry
from tests.faults.train_helpers import Results, TrainProcess, deliver, deployment
from tests.functions.train.conftest import digits
from tests.functions.train.online_control import online_control_record

pytestmark = pytest.mark.integration
LEASE_S = 6.0
"""An online window's run holds a lease renewed while it trains, as an ordinary run does
(``train_lease_s``, 60 s by default); short here so the dead window's lease lapses quickly."""
EPOCHS = 40
FIRST, SECOND = 300, 100


def _publish(bootstrap: str, topic: str, x, y) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(len(x)):
        producer.produce(topic, key=y[i].tobytes(), value=x[i].tobytes(), partition=0)
    assert producer.flush(30) == 0


def _tick(address: str, token: str, event_id: str) -> tuple[int, Any]:
    """One PingSource tick; ``(0, reason)`` when the connection broke."""
    request = urllib.request.Request(
        f"{address}/",
        data=b"{}",
        method="POST",
        headers={
            "ce-specversion": "1.0",
            "ce-id": event_id,
            "ce-source": "/tests/ticker",
            "ce-type": "dev.knative.sources.ping",
            "content-type": "application/json",
            "Authorization": f"Bearer {token}",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as reply:
            return reply.status, json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
    except OSError as e:  # reset or refused: the pod died under the request
        return 0, f"{type(e).__name__}: {e}"


def _window_of(body: Any, stream_id: str) -> dict[str, Any] | None:
    [entry] = [s for s in body["streams"] if s["stream_id"] == stream_id]
    return entry["window"]


def test_a_train_process_killed_mid_window_does_not_advance_the_cursor(stack, unique, tmp_path):
    settings = stack.replace(
        control_topic=f"okill-control-{unique}",
        results_topic=f"okill-results-{unique}",
        state_dir=str(tmp_path),
        train_lease_s=LEASE_S,
    )
    registry = Registry.from_settings(settings)
    deployment_id = deployment(registry, unique, epochs=EPOCHS)
    assert int(deployment_id) < 256  # Kafka-ML's one-byte key
    topic = f"okill-{unique}"
    bootstrap = settings.kafka_bootstrap
    ensure_topic(bootstrap, topic, partitions=1)
    x, y = digits()
    x = x.reshape(len(x), 64)
    control = online_control_record(settings, deployment_id, topic, data_reshape="64")
    results = Results(settings)
    first = TrainProcess(settings.replace(state_dir=str(tmp_path / "pod-a")))
    second = TrainProcess(settings.replace(state_dir=str(tmp_path / "pod-b")))  # the next pod
    starting = [threading.Thread(target=pod.start) for pod in (first, second)]
    for t in starting:
        t.start()
    for t in starting:
        t.join(150)
    token = settings.auth_token
    sid = None
    try:
        status, stream = deliver(first.address, control, token)
        assert status == 200 and stream["status"] == "open", stream
        sid = stream["id"]
        assert stream["cursor"] == {"0": 0}
        _publish(bootstrap, topic, x[:FIRST], y[:FIRST])

        try:
            started = time.monotonic()
            answers: list = []
            sender = threading.Thread(
                target=lambda: answers.append(_tick(first.address, token, f"tick-0-{unique}"))
            )
            sender.start()
            killed_at = results.wait_for(
                lambda e: (
                    e["data"].get("deployment_id") == deployment_id
                    and e["data"].get("epoch", 0) >= 3
                ),
                120,
            )["data"]["epoch"]
            first.kill()
            sender.join(30)
            killed_s = time.monotonic() - started
        finally:
            first.stop()
        assert answers and answers[0][0] == 0, answers  # the tick died with the process
        before, _ = registry.get_stream(sid)
        [stuck] = [r for r in registry.list_runs() if r.get("stream_id") == sid]
        assert before["cursor"] == {"0": 0} and before["windows"] == []  # not advanced
        assert stuck["status"] == "running" and stuck["attempt"] == 1

        # the next ticks reach the other pod: the stream is skipped (its window held, 409 in
        # the tick's report) while the dead window's lease holds
        restarted = time.monotonic()
        ticks: list[int | str] = []
        end = restarted + 120
        while True:
            status, body = _tick(second.address, token, f"tick-{len(ticks) + 1}-{unique}")
            assert status == 200, body  # a held stream does not fail the tick
            [entry] = [s for s in body["streams"] if s["stream_id"] == sid]
            held = entry.get("skipped") == "held"
            if held:
                assert entry["status"] == 409 and "retry later" in entry["error"], entry
            ticks.append("held" if held else status)
            if not held or time.monotonic() > end:
                break
            time.sleep(1.0)
        finished_s = time.monotonic() - restarted
        w0 = _window_of(body, sid)
        after, _ = registry.get_stream(sid)
        idle = _window_of(_tick(second.address, token, f"tick-idle-{unique}")[1], sid)

        _publish(bootstrap, topic, x[FIRST : FIRST + SECOND], y[FIRST : FIRST + SECOND])
        status1, body1 = _tick(second.address, token, f"tick-next-{unique}")
        assert status1 == 200, body1
        w1 = _window_of(body1, sid)
        final, _ = registry.get_stream(sid)
    finally:
        second.stop()
        results.close()
        if sid is not None:
            current, etag = registry.get_stream(sid)
            if current["status"] == "open":
                registry.update_stream(sid, etag, status="stopped")

    runs = [r for r in registry.list_runs() if r.get("stream_id") == sid]
    per_window = {
        w["run_id"]: sum(r["run_id"] == w["run_id"] for r in runs) for w in final["windows"]
    }
    retried = next(r for r in runs if r["run_id"] == w0["run_id"])
    print(
        f"\nSIGKILL at epoch {killed_at}/{EPOCHS} of window 0 ({killed_s:.1f}s in); cursor "
        f"after the kill {before['cursor']} (windows {len(before['windows'])}); ticks after: "
        f"{ticks} ({ticks.count('held')} x held until the {LEASE_S:g}s lease lapsed); window 0 "
        f"{w0['ranges']} trained as attempt {retried['attempt']} {finished_s:.1f}s after the "
        f"kill; cursor {before['cursor']} -> {after['cursor']} (+{w0['records']}); next window "
        f"{w1['ranges']} -> cursor {final['cursor']}; runs per window "
        f"{list(per_window.values())}; runs of the stream {len(runs)}"
    )
    assert w0["ranges"] == [f"{topic}:0:0:{FIRST}"] and w0["records"] == FIRST
    assert w0["run_id"] == stuck["run_id"]  # the same window, not a new one
    assert retried["attempt"] == 2 and retried["status"] == "succeeded"
    assert after["cursor"] == {"0": FIRST} and len(after["windows"]) == 1
    assert idle is None  # nothing new: the retried window is not trained again
    assert w1["ranges"] == [f"{topic}:0:{FIRST}:{FIRST + SECOND}"] and w1["records"] == SECOND
    assert final["cursor"] == {"0": FIRST + SECOND}
    assert [w["run_id"] for w in final["windows"]] == [w0["run_id"], w1["run_id"]]
    assert len(runs) == 2 and all(r["status"] == "succeeded" for r in runs)
    assert list(per_window.values()) == [1, 1]
    assert sum(r["records"] for r in runs) == FIRST + SECOND  # no record trained twice
