"""Infer under real gunicorn with the LiteRT model, against the real Kafka and MinIO.

10,000 records go through a KafkaSource stand-in (16 concurrent deliveries); the outputs, the
dead letters, the HTTP path and the batching metric are checked against what was sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from tests.functions.infer.conftest import ROOT, deploy, publish, read_topic, serve
from tests.functions.infer.kafkasource_driver import deliver_topic

pytestmark = pytest.mark.integration

N = 10_000
BAD = [b"", b"\x00\x01\x02", b"\x00" * 255, b"\x00" * 300, b"not a float array at all"]


NO_TF_SCRIPT = """
import json, os, sys
from functions.infer.app import create_app
app = create_app()
service = app.extensions["kml.infer"]
assert service.wait_ready(60)
r = app.test_client().post(f"/v1/models/{service.settings.inference_id}:predict",
                           json={"instances": [[0.5] * 64]},
                           headers={"Authorization": "Bearer " + os.environ["KML_TEST_TOKEN"]})
print(json.dumps({"status": r.status_code, "runtime": service.loaded.model.runtime,
                  "tf": [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")]}))
"""


def _key(i: int) -> bytes | None:
    return None if i % 50 == 0 else f"k-{i}".encode()


@pytest.fixture(scope="module")
def litert(stack, digits, tmp_path_factory):
    deployment = deploy(stack, digits, tmp_path_factory.mktemp("cache"), tflite=True)
    served = serve(deployment, tmp_path_factory.mktemp("infer-litert"))
    yield deployment, served
    served.proc.stop()


@pytest.fixture(scope="module")
def kafka_run(stack, digits, litert):
    """Publish N good records (+ a few undecodable ones) and deliver them all."""
    deployment, served = litert
    n_inputs = len(digits.inputs)
    records = []
    for i in range(N):
        headers = [("trace-id", f"t-{i}".encode())] if i % 10 == 0 else []
        records.append((digits.inputs[i % n_inputs].tobytes(), _key(i), headers))
        if i % 2000 == 1999:
            j = i // 2000
            records.append((BAD[j], f"bad-{j}".encode(), [("trace-id", b"bad")]))
    publish(stack.kafka_bootstrap, deployment.spec["input_topic"], records)
    started = time.monotonic()
    deliveries = deliver_topic(
        stack.kafka_bootstrap,
        deployment.spec["input_topic"],
        served.url + "/",
        N + len(BAD),
        token=served.token,
        concurrency=16,
    )
    took = time.monotonic() - started
    print(
        f"\nkafka path: {N + len(BAD)} records in {took:.1f}s = "
        f"{(N + len(BAD)) / took:.0f} records/s (16 concurrent deliveries)"
    )
    outputs = read_topic(stack.kafka_bootstrap, deployment.spec["output_topic"], N)
    return deliveries, outputs


def test_every_record_gives_exactly_one_keyed_prediction(digits, kafka_run):
    deliveries, outputs = kafka_run
    ok = [d for d in deliveries if d.status == 200 and not json.loads(d.body).get("dead_lettered")]
    odd = Counter((d.status, d.body[:120]) for d in deliveries if d.status != 200)
    assert len(ok) == N, odd
    assert len(outputs) == N
    n_inputs = len(digits.inputs)
    expected_keys = {f"k-{i}" for i in range(N) if _key(i) is not None}
    by_key = {m.key().decode(): m for m in outputs}
    assert len(by_key) == N  # no duplicates
    keyed = {k: m for k, m in by_key.items() if k.startswith("k-")}
    assert set(keyed) == expected_keys
    for key, msg in keyed.items():
        i = int(key[2:])
        values = json.loads(msg.value())["values"]
        assert len(values) == 10
        assert int(np.argmax(values)) == int(np.argmax(digits.keras_predictions[i % n_inputs]))
        headers = dict(msg.headers())
        assert headers["kml-input-topic"].decode().startswith("in-")
        if i % 10 == 0:
            assert headers["traceid"] == f"t-{i}".encode()
    # keyless inputs are keyed by their coordinates, which the headers repeat
    keyless = {k: m for k, m in by_key.items() if not k.startswith("k-")}
    assert len(keyless) == N - len(expected_keys) == N // 50
    for key, msg in keyless.items():
        h = {k: v.decode() for k, v in msg.headers()}
        assert key == f"{h['kml-input-topic']}:{h['kml-input-partition']}:{h['kml-input-offset']}"
    delivered_at = {(d.partition, d.offset) for d in ok}
    assert {
        (int(dict(m.headers())["kml-input-partition"]), int(dict(m.headers())["kml-input-offset"]))
        for m in outputs
    } == delivered_at


def test_undecodable_records_are_dead_lettered_once_with_reasons_and_answered_2xx(
    stack, litert, kafka_run
):
    deployment, _ = litert
    deliveries, _ = kafka_run
    assert all(d.status == 200 for d in deliveries)  # handled: no copy from the source's sink
    rejected = sorted(
        (d for d in deliveries if json.loads(d.body).get("dead_lettered")), key=lambda d: d.key
    )
    assert [d.key for d in rejected] == [f"bad-{j}".encode() for j in range(5)]
    assert all("256" in json.loads(d.body)["reason"] for d in rejected)  # names the size needed
    dead = read_topic(stack.kafka_bootstrap, deployment.settings.dlq_topic, len(BAD))
    assert len(dead) == len(BAD)
    for msg in dead:
        j = int(msg.key().decode().split("-")[1])
        h = dict(msg.headers())
        assert msg.value() == BAD[j] or (BAD[j] == b"" and msg.value() in (None, b""))
        assert b"bytes" in h["kml-error"] and h["kml-error-kind"] == b"undecodable_record"
        assert h["kml-inference-id"] == deployment.id.encode()
        assert h["traceid"] == b"bad"
        assert {"kml-input-topic", "kml-input-partition", "kml-input-offset"} <= set(h)


def test_http_path_predicts_what_the_kafka_path_produced(digits, litert, kafka_run):
    deployment, served = litert
    _, outputs = kafka_run
    by_key = {m.key().decode(): json.loads(m.value())["values"] for m in outputs}
    picks = [1, 2, 3, 17, 99, 1234, 4321, 9999]
    instances = [digits.inputs[i % len(digits.inputs)].tolist() for i in picks]
    kafka = np.array([by_key[f"k-{i}"] for i in picks])

    kserve = served.predict(deployment.id, instances)
    assert kserve.status_code == 200, kserve.text
    np.testing.assert_allclose(kserve.json()["predictions"], kafka, atol=1e-6)

    event = requests.post(
        served.url + "/",
        json={"instances": instances},
        headers={
            "ce-specversion": "1.0",
            "ce-type": "kml.inference.request",
            "ce-id": "r-1",
            "ce-source": "/tests",
            **served.headers,
        },
        timeout=30,
    )
    assert event.status_code == 200 and event.headers["ce-type"] == "kml.inference.response"
    np.testing.assert_allclose(event.json()["predictions"], kafka, atol=1e-6)
    keras = digits.keras_predictions[[i % len(digits.inputs) for i in picks]]
    np.testing.assert_allclose(kafka, keras, atol=1e-5)  # LiteRT agrees with Keras


def test_concurrent_http_requests_are_batched_and_latency_is_reported(digits, litert):
    deployment, served = litert
    session_instances = [[digits.inputs[i].ravel().tolist()] for i in range(400)]  # flat ones

    def call(instances):
        started = time.perf_counter()
        r = served.predict(deployment.id, instances)
        return r.status_code, time.perf_counter() - started

    served.predict(deployment.id, session_instances[0])
    before = _batch_histogram(served.metrics())
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, session_instances))
    assert [s for s, _ in results] == [200] * len(session_instances)
    after = _batch_histogram(served.metrics())
    calls = after["count"] - before["count"]
    singles = after["le_1"] - before["le_1"]
    assert after["sum"] - before["sum"] == len(session_instances)
    assert calls < len(session_instances) and singles < calls  # batches of more than one
    ms = sorted(t * 1000 for _, t in results)
    print(
        f"\nHTTP (16 concurrent, 1 instance each): p50 {ms[len(ms) // 2]:.1f} ms, "
        f"p99 {ms[int(len(ms) * 0.99)]:.1f} ms; {len(session_instances)} requests in "
        f"{calls:.0f} model calls"
    )
    text = served.metrics()
    assert f'kml_infer_info{{inference="{deployment.id}",runtime="litert"}} 1.0' in text


def test_the_litert_process_never_imports_tensorflow(litert):
    deployment, _ = litert
    from kml.dev.inference import infer_env

    done = subprocess.run(
        [sys.executable, "-c", NO_TF_SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            **infer_env(deployment.settings, deployment.id),
            "KML_TEST_TOKEN": deployment.settings.auth_token,  # the caller's, not the function's
        },
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"status": 200, "runtime": "litert", "tf": []}


def _batch_histogram(text: str) -> dict[str, float]:
    def value(prefix: str) -> float:
        line = next(li for li in text.splitlines() if li.startswith(prefix))
        return float(line.rsplit(" ", 1)[1])

    return {
        "count": value("kml_infer_batch_size_count"),
        "sum": value("kml_infer_batch_size_sum"),
        "le_1": value('kml_infer_batch_size_bucket{le="1.0"}'),
    }
