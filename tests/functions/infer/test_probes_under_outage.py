"""Infer under real gunicorn with Kafka unreachable: requests blocked on Kafka never make the
health probes wait (a pod whose liveness probe times out is restarted, losing its work)."""

from __future__ import annotations

import base64
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from kml.dev.procs import free_port
from tests.functions.infer.conftest import deploy, serve

pytestmark = pytest.mark.integration

SLOTS = 4
CONCURRENT = 24
"""More Kafka-path requests at once than the slots, and than the 16 threads infer used to have."""


def _kafka_event(topic: str, offset: int, token: str) -> dict[str, str]:
    return {
        "authorization": f"Bearer {token}",  # the bridge's (Knative's data plane's) credential
        "ce-specversion": "1.0",
        "ce-type": "dev.knative.kafka.event",
        "ce-id": f"partition:0/offset:{offset}",
        "ce-source": f"/apis/v1/namespaces/kml/kafkasources/kml-infer#{topic}",
        "ce-knativekafkapartition": "0",
        "ce-knativekafkaoffset": str(offset),
        "ce-key": base64.b64encode(f"k-{offset}".encode()).decode(),
        "content-type": "application/octet-stream",
    }


def test_liveness_answers_within_a_second_while_every_slot_waits_for_kafka(stack, digits, tmp_path):
    deployment = deploy(stack, digits, tmp_path / "cache", tflite=True, partitions=1)
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens: every produce waits its timeout
    down = type(deployment)(
        deployment.settings.replace(kafka_bootstrap=nowhere, infer_request_slots=SLOTS),
        deployment.spec,
    )
    served = serve(down, tmp_path / "infer")
    value = digits.inputs[0].tobytes()
    topic = deployment.spec["input_topic"]

    def kafka_path(offset: int) -> tuple[int, float]:
        started = time.monotonic()
        r = requests.post(
            served.url + "/",
            data=value,
            headers=_kafka_event(topic, offset, down.settings.auth_token),
            timeout=60,
        )
        return r.status_code, time.monotonic() - started

    try:
        with ThreadPoolExecutor(CONCURRENT) as pool:
            calls = [pool.submit(kafka_path, i) for i in range(CONCURRENT)]
            time.sleep(1.0)  # every request is in: the slots' ones wait on Kafka
            probes = []
            for _ in range(5):
                started = time.monotonic()
                live = requests.get(served.url + "/health/liveness", timeout=5)
                ready = requests.get(served.url + "/health/readiness", timeout=5)
                probes.append((live.status_code, ready.status_code, time.monotonic() - started))
                time.sleep(0.5)
            answers = [c.result(timeout=60) for c in calls]
    finally:
        served.proc.stop()
    busy = [t for s, t in answers if s == 503 and t < 2.0]
    waited = [t for s, t in answers if s == 503 and t >= 2.0]
    print(
        f"\nKafka unreachable, {CONCURRENT} Kafka-path requests at once, {SLOTS} slots: "
        f"{len(waited)} waited for Kafka ({max(waited, default=0):.1f}s) and got 503, "
        f"{len(busy)} got 503 at once (slots busy); probes took "
        f"{', '.join(f'{p[2] * 1000:.0f}ms' for p in probes)}"
    )
    assert all(p[:2] == (200, 200) for p in probes), probes
    assert max(p[2] for p in probes) < 1.0, probes
    assert all(s == 503 for s, _ in answers)  # retried by the KafkaSource, never dead-lettered
    assert len(waited) == SLOTS and len(busy) == CONCURRENT - SLOTS
