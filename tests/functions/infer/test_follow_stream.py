"""An inference deployment following an online stream, on the real stack: under steady load (a
KafkaSource stand-in delivering records as they are produced, two clients calling ``:predict``)
the stream's pointer moves from version A to version B the way train moves it, and the gunicorn
infer process switches by itself with no failed request, every output naming its version, each
output that version's prediction, and every record sent after the switch predicted by B."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from confluent_kafka import Consumer, Producer, TopicPartition

from kafkaml.kafka import ensure_topic
from storage.registry import Registry
from storage.signed import SignedReader
from tests.functions.infer.conftest import (
    MODEL,
    ROOT,
    Deployment,
    Digits,
    read_topic,
    serve,
)
from tests.functions.infer.kafkasource_driver import ce_headers

pytestmark = pytest.mark.integration

RATE = 80
"""Records produced per second while the load runs."""


@pytest.fixture(scope="module")
def shifted(tmp_path_factory) -> Digits:
    """Model B: trained like the digits model with every label shifted by one."""
    out = tmp_path_factory.mktemp("digits-shifted")
    done = subprocess.run(
        [sys.executable, "-m", "tests.functions.infer.make_model", str(out), "1"],
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


def _upload(registry: Registry, run_id: str, model: Digits) -> str:
    for filename in ("model.keras", "model.tflite"):
        registry.store.put(
            registry.run_artifact_key(run_id, MODEL, filename),
            (model.folder / filename).read_bytes(),
        )
    return registry.run_artifact_key(run_id, MODEL, "model.keras")


def _pointer(version: str, run_id: str, artifact: str, window: int) -> dict:
    return {"model": version, "run_id": run_id, "artifact": artifact, "window": window}


def test_signed_reader_answers_none_while_an_object_is_unchanged(stack):
    reader = SignedReader.from_settings(stack)
    registry = Registry.from_settings(stack)
    key = f"streams/probe-{uuid.uuid4().hex[:8]}.json"
    etag = registry.store.put_json(key, {"n": 1})
    assert reader.get_if_changed(key, etag) is None  # 304, no body
    first = reader.get_if_changed(key, "")
    assert first is not None and first.etag == etag and json.loads(first.body) == {"n": 1}
    changed = registry.store.put_json(key, {"n": 2})
    again = reader.get_if_changed(key, etag)
    assert again is not None and again.etag == changed != etag


def test_a_following_service_switches_versions_under_load_without_a_failed_request(
    stack, digits, shifted, tmp_path_factory
):
    unique = uuid.uuid4().hex[:8]
    registry = Registry.from_settings(stack)
    registry.ensure_ready()
    sid = f"s-{unique}"
    a_run, b_run = f"run-a-{unique}", f"run-b-{unique}"
    version_a, version_b = f"{MODEL}-{sid}@1", f"{MODEL}-{sid}@2"
    a_key, b_key = _upload(registry, a_run, digits), _upload(registry, b_run, shifted)
    registry.create_stream(
        sid,
        {
            "topic": f"live-{unique}",
            "status": "open",
            "windows": [],
            "promoted": _pointer(version_a, a_run, a_key, 0),
            "promotions": 1,
        },
    )
    spec = registry.create_inference(
        {
            "id": f"follow-{unique}",
            "stream": sid,
            "run_id": a_run,
            "model": MODEL,
            "input_format": "RAW",
            "input_config": {"data_type": "float32", "data_reshape": "8 8"},
            "input_topic": f"in-{unique}",
            "output_topic": f"out-{unique}",
            "min_scale": 0,
            "max_scale": 1,
            "target_concurrency": 16,
        }
    )
    settings = stack.replace(
        inference_id=spec["id"],
        dlq_topic=f"dlq-{unique}",
        model_cache_dir=str(tmp_path_factory.mktemp("cache")),
        infer_follow_s=0.5,
    )
    for topic, partitions in ((spec["input_topic"], 3), (spec["output_topic"], 3)):
        ensure_topic(stack.kafka_bootstrap, topic, partitions)
    ensure_topic(stack.kafka_bootstrap, settings.dlq_topic, 1)
    served = serve(Deployment(settings, spec), tmp_path_factory.mktemp("infer-follow"))
    name = spec["id"]
    meta_url = f"{served.url}/v1/models/{name}"
    try:
        meta = requests.get(meta_url, headers=served.headers, timeout=10).json()
        assert (meta["model_version"], meta["stream"]) == (version_a, sid)

        inputs = digits.inputs
        expected = {version_a: digits.keras_predictions, version_b: shifted.keras_predictions}
        stop = threading.Event()
        produced: list[int] = []  # how many records were produced, appended as they go
        answers: list[tuple[float, int, int, str | None, bool]] = []

        def produce() -> None:
            producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "linger.ms": 5})
            i, started = 0, time.monotonic()
            while not stop.is_set():
                producer.produce(
                    spec["input_topic"], value=inputs[i % len(inputs)].tobytes(), key=b"%d" % i
                )
                producer.poll(0)
                i += 1
                produced.append(i)
                time.sleep(max(0.0, started + i / RATE - time.monotonic()))
            assert producer.flush(30) == 0

        def call(seed: int) -> None:
            session = requests.Session()
            rng = np.random.default_rng(seed)
            while not stop.is_set():
                i = int(rng.integers(len(inputs)))
                r = session.post(
                    f"{served.url}/v1/models/{name}:predict",
                    json={"instances": [inputs[i].tolist()]},
                    headers=served.headers,
                    timeout=30,
                )
                body = r.json() if r.status_code == 200 else {}
                version = body.get("model_version")
                ok = version in expected and np.allclose(
                    body["predictions"][0], expected[version][i], atol=1e-4
                )
                answers.append((time.monotonic(), r.status_code, i, version, ok))

        deliveries: list[int] = []
        total = [0]  # set once the producer stops: the driver runs until it delivered them all

        def deliver() -> None:
            """The KafkaSource stand-in, following the topic while records arrive."""
            consumer = Consumer(
                {"bootstrap.servers": stack.kafka_bootstrap, "group.id": f"drv-{unique}"}
            )
            parts = consumer.list_topics(spec["input_topic"], timeout=10).topics
            consumer.assign(
                [
                    TopicPartition(spec["input_topic"], p, 0)
                    for p in parts[spec["input_topic"]].partitions
                ]
            )
            local = threading.local()

            def post(msg) -> int:
                if getattr(local, "session", None) is None:
                    local.session = requests.Session()
                headers = ce_headers(
                    msg.topic(), msg.partition(), msg.offset(), msg.key(), None, msg.timestamp()[1]
                )
                headers["Authorization"] = f"Bearer {served.token}"
                return local.session.post(
                    served.url, data=msg.value(), headers=headers, timeout=60
                ).status_code

            deadline = time.monotonic() + 120
            with ThreadPoolExecutor(8) as pool:
                while not (total[0] and len(deliveries) >= total[0]):
                    assert time.monotonic() < deadline, f"{len(deliveries)} of {total[0]}"
                    batch = [m for m in consumer.consume(200, timeout=0.2) if m.error() is None]
                    deliveries.extend(pool.map(post, batch))
            consumer.close()

        threads = [threading.Thread(target=produce)] + [
            threading.Thread(target=call, args=(s,)) for s in range(2)
        ]
        for t in threads:
            t.start()
        driver = threading.Thread(target=deliver)
        driver.start()
        warm = time.monotonic() + 60
        while len(deliveries) < 2 * RATE or len(answers) < 50:  # A serves both paths first
            assert time.monotonic() < warm, (len(deliveries), len(answers))
            time.sleep(0.05)
        _, etag = registry.get_stream(sid)  # promote as train does: the pointer, If-Match
        registry.update_stream(
            sid, etag, promoted=_pointer(version_b, b_run, b_key, 1), promotions=2
        )
        promoted_at = time.monotonic()
        while True:
            meta = requests.get(meta_url, headers=served.headers, timeout=10).json()
            if meta["model_version"] == version_b:
                break
            assert time.monotonic() - promoted_at < 30, meta
            time.sleep(0.05)
        switched_at = time.monotonic()
        produced_at_switch = len(produced)
        time.sleep(3.0)
        stop.set()
        for t in threads:
            t.join(60)
        total[0] = len(produced)
        driver.join(120)
        assert not driver.is_alive()
        outputs = read_topic(stack.kafka_bootstrap, spec["output_topic"], total[0])
    finally:
        stop.set()
        served.proc.stop()

    # zero failed requests: every delivery and every :predict answered 200
    assert len(deliveries) == total[0] and set(deliveries) == {200}
    assert answers and {a[1] for a in answers} == {200}
    # every output once, labelled with its version, and that version's prediction
    by_index: dict[int, tuple[str, np.ndarray]] = {}
    for m in outputs:
        headers = dict(m.headers())
        by_index[int(m.key())] = (
            headers["kml-model-version"].decode(),
            np.asarray(json.loads(m.value())["values"]),
        )
    assert len(outputs) == len(by_index) == total[0]
    for i, (version, values) in by_index.items():
        assert version in expected, version
        assert np.allclose(values, expected[version][i % len(inputs)], atol=1e-4), (i, version)
    assert all(a[4] for a in answers)  # each answer is the prediction of the version it names
    # before the promotion A served; everything sent after the switch was predicted by B
    assert by_index[0][0] == version_a
    after = [v for i, (v, _) in by_index.items() if i >= produced_at_switch]
    assert after and set(after) == {version_b}
    assert {a[3] for a in answers if a[0] > switched_at} == {version_b}
    first_b = min(a[0] for a in answers if a[3] == version_b)
    meta_after = meta
    assert meta_after["following"]["swaps"] == 1
    assert meta_after["following"]["previous_version"] == version_a
    a_out = sum(1 for v, _ in by_index.values() if v == version_a)
    print(
        f"\nfollow: {total[0]} records delivered, {len(answers)} :predict calls, 0 failed; "
        f"{a_out} outputs by A, {total[0] - a_out} by B; promotion seen as B after "
        f"{switched_at - promoted_at:.2f} s (check every {settings.infer_follow_s} s), first "
        f":predict answered by B {first_b - promoted_at:.2f} s after the promotion"
    )
