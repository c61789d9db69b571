"""Inference through restarts of the parts it needs, on a private stack (Kafka and MinIO of its
own, so restarting them does not disturb the session's stack).

* The broker restarted while records stream through the local KafkaSource bridge into infer:
  every record Kafka acknowledged comes out as a prediction or a dead letter (0 lost); repeats
  are counted and reported.
* MinIO down while infer starts: readiness says why (the model is not loaded) and turns green
  once MinIO is back, without a restart of the process.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests

from kml.dev.bridge.runner import read_status
from kml.dev.inference import (
    gunicorn_argv,
    home_of,
    infer_env,
    start_local_inference,
    stop_local_inference,
    threads_for,
)
from kml.dev.procs import Proc, free_port
from kml.dev.stack import Stack, infrastructure, isolated_settings
from tests.faults.infer_helpers import Published, collect, publish_paced, running_bridge
from tests.functions.infer.conftest import ROOT, deploy

pytestmark = pytest.mark.integration

GOOD, BAD = 2000, 6
PUBLISH_S = 9.0
"""The records are produced evenly over this long; the broker is down in the middle of it."""


@pytest.fixture(scope="module")
def private(tmp_path_factory):
    settings = isolated_settings(str(tmp_path_factory.mktemp("faults-stack")), bucket="kml-faults")
    parts = infrastructure(settings)
    stack = Stack(settings, parts=parts)
    try:
        stack.up()
        yield settings, {p.name: p for p in parts}
    finally:
        stack.down()


def test_a_broker_restart_under_load_loses_no_record(private, digits, tmp_path):
    settings, parts = private
    deployment = deploy(settings, digits, tmp_path / "cache", tflite=True, partitions=3)
    local = deployment.settings.replace(state_dir=str(tmp_path / "state"))
    spec = deployment.spec
    n = len(digits.inputs)
    records = [(digits.inputs[i % n].tobytes(), f"k-{i}".encode(), True) for i in range(GOOD)]
    for j in range(BAD):  # undecodable: 3 bytes where 256 are expected
        records.insert((j + 1) * GOOD // (BAD + 1), (b"\x01\x02\x03", f"bad-{j}".encode(), False))
    published = Published()
    with running_bridge(local, tmp_path / "bridge"):
        start_local_inference(local, deployment.id, timeout_s=240)
        try:
            producing = threading.Thread(
                target=publish_paced,
                args=(settings.kafka_bootstrap, spec["input_topic"], records, PUBLISH_S, published),
            )
            producing.start()
            time.sleep(PUBLISH_S / 3)
            down_at = time.monotonic()
            parts["kafka"].proc.stop(timeout=0.5)  # killed mid-work, as a crashed broker pod
            time.sleep(3.0)
            parts["kafka"].start()
            outage = time.monotonic() - down_at
            producing.join(timeout=180)
            assert not producing.is_alive()
            sent = set(published.good) | set(published.bad)
            started = time.monotonic()
            tally = collect(
                settings.kafka_bootstrap, spec["output_topic"], local.dlq_topic, sent, 150
            )
            drained = time.monotonic() - started
            bridge = read_status(local.state_dir)
            infer_log = Proc("infer", home_of(local, deployment.id)).log_file
            log_tail = infer_log.read_text(errors="replace")[-3000:]
        finally:
            stop_local_inference(local, deployment.id)
    figures = tally.figures(published)
    lost = sorted(sent - tally.handled())
    if lost:
        print(f"first lost: {lost[:10]}\nbridge: {bridge}\ninfer log:\n{log_tail}")
    print(
        f"\nbroker killed and restarted under load (down {outage:.1f}s, drained "
        f"{drained:.1f}s after the last record): {figures}"
    )
    assert published.failed == 0 and figures["in"] == GOOD + BAD
    assert figures["lost"] == 0, lost[:10]
    # Every undecodable record is dead-lettered by infer itself, once; never predicted.
    assert set(tally.dead_by_function) == set(published.bad)
    assert not set(tally.predicted) & set(published.bad)
    # Every good record is predicted (or, had its retries run out, dead-lettered by the source).
    assert set(published.good) <= set(tally.predicted) | set(tally.dead_by_source)


def _readiness(url: str) -> tuple[int, str]:
    try:
        r = requests.get(f"{url}/health/readiness", timeout=2)
    except requests.RequestException:
        return 0, ""
    return r.status_code, r.text


def test_infer_becomes_ready_once_minio_returns(private, digits, tmp_path):
    settings, parts = private
    deployment = deploy(settings, digits, tmp_path / "cache", tflite=True, partitions=1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = Proc("infer", tmp_path / "infer")
    parts["minio"].stop()
    try:
        try:
            proc.start(
                gunicorn_argv(port, threads_for(deployment.settings)),
                env=infer_env(deployment.settings, deployment.id),
                cwd=ROOT,
            )
            deadline = time.monotonic() + 60
            while _readiness(url)[0] == 0 and time.monotonic() < deadline:
                time.sleep(0.1)  # gunicorn is booting
            seen = []
            for _ in range(20):  # 4 s of MinIO being down
                seen.append(_readiness(url))
                time.sleep(0.2)
            live = requests.get(f"{url}/health/liveness", timeout=2).status_code
        finally:
            parts["minio"].start()
        back_at = time.monotonic()
        status = 0
        while time.monotonic() < back_at + 60:
            status, _ = _readiness(url)
            if status == 200:
                break
            time.sleep(0.1)
        ready_after = time.monotonic() - back_at
        predicted = requests.post(
            f"{url}/v1/models/{deployment.id}:predict",
            json={"instances": digits.inputs[:2].tolist()},
            headers={"authorization": f"Bearer {deployment.settings.auth_token}"},
            timeout=30,
        )
    finally:
        proc.stop()
    print(
        f"\nMinIO down during infer start: readiness {sorted({s for s, _ in seen})} for "
        f"{len(seen) * 0.2:.0f}s, liveness {live}; ready {ready_after:.1f}s after MinIO returned"
    )
    assert {s for s, _ in seen} == {503}
    assert "model not loaded: storage unreachable" in seen[-1][1]  # says why it is not ready
    assert live == 200  # not restarted for it: it is waiting, not broken
    assert status == 200 and ready_after < 35  # the loader's backoff tops out at 30 s
    assert predicted.status_code == 200 and len(predicted.json()["predictions"]) == 2
