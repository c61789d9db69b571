"""Stream mode as real processes on the real broker and MinIO.

- 10,000 records through the stream loop give exactly 10,000 outputs, each identical (value, key,
  headers) to what the event path produces for the same record, and the undecodable ones are
  dead-lettered identically. The event path runs in a child process: each record becomes the
  CloudEvent KafkaSource would send (the local bridge's rendering), parsed as the infer function
  parses it and handled by its Kafka-path handler.
- Two consumers share the group (a rebalance), one is killed with SIGKILL mid-stream and
  restarted: every input still gets an output; repeats are counted.
- ``kml deploy inference ID --local`` runs a stream-mode deployment as its consumer process.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from typer.testing import CliRunner

from kml.cli import app
from kml.dev.inference import infer_env, stop_local_inference, stream_argv
from kml.dev.procs import Proc, free_port, readiness_status
from storage.registry import Registry
from tests.functions.infer.conftest import ROOT, Deployment, deploy, publish, read_topic

pytestmark = pytest.mark.integration

N = 10_000
BAD = [b"", b"\x00\x01\x02", b"\x00" * 255, b"\x00" * 300, b"not a float array at all"]
HEADERS = [
    ("Sensor-Id", b"s-7"),
    ("content-type", b"application/octet-stream"),
    ("n\xe9", b"\xc3\xa9"),
]

EVENT_PATH = """
import base64, json, sys, uuid
from confluent_kafka import Consumer, TopicPartition
from functions.infer.kafka_path import handle_kafka_event
from functions.infer.metrics import InferMetrics
from functions.infer.producer import Delivery
from functions.infer.serving import InferenceService
from kafkaml.errors import KmlError
from kafkaml.events import parse_http
from kafkaml.manifests import render_inference_manifests
from kafkaml.settings import Settings
from kml.dev.bridge.events import Record, record_to_event, to_http_binary
from kml.dev.bridge.sources import parse_kafka_source

settings, expected = Settings.from_env(), int(sys.argv[1])
sent = []

class Keep:
    def send(self, topic, value, key, headers):
        sent.append([topic, value, key, headers])
        return Delivery(topic, 0, len(sent))
    def close(self):
        pass

service = InferenceService(settings, InferMetrics(settings.inference_id),
                           producer_factory=lambda s: Keep())
service.start()
assert service.wait_ready(180)
docs = render_inference_manifests({**service.spec, "mode": "event"}, settings)
source = parse_kafka_source(next(d for d in docs if d["kind"] == "KafkaSource"))
topic = service.spec["input_topic"]
consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": str(uuid.uuid4())})
parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
consumer.assign([TopicPartition(topic, p, 0) for p in parts])
records = []
while len(records) < expected:
    records += [m for m in consumer.consume(1000, timeout=1.0) if m.error() is None]
for msg in records:
    headers, body = to_http_binary(record_to_event(Record.from_message(msg), source), "kml")
    event = parse_http({k: v.decode("latin-1") for k, v in headers.items()}, body)
    try:
        handle_kafka_event(service, event)
    except KmlError as e:
        assert not e.retryable, e.message
b64 = lambda b: None if b is None else base64.b64encode(b).decode()
print(json.dumps([[t, b64(v), b64(k), [[n, b64(x)] for n, x in h]] for t, v, k, h in sent]))
"""


def _key(i: int) -> bytes | None:
    if i % 50 == 0:
        return None  # keyed by the input's coordinates
    if i % 50 == 1:
        return b"\x00\xff" + i.to_bytes(2, "big") + b"\n\r"  # no text key type carries these
    return f"k-{i}".encode()


def _out(msg) -> tuple:
    """An output record as comparable data: where its input was, its value, key and headers."""
    headers = [(n, v) for n, v in (msg.headers() or [])]
    where = dict(headers)
    return (
        (int(where["kml-input-partition"]), int(where["kml-input-offset"])),
        (msg.topic(), msg.value(), msg.key(), headers),
    )


def _from_child(rows: list) -> dict:
    def raw(b: str | None) -> bytes | None:
        return None if b is None else base64.b64decode(b)

    out = {}
    for topic, value, key, headers in rows:
        hs = [(n, raw(v)) for n, v in headers]
        where = dict(hs)
        out[(int(where["kml-input-partition"]), int(where["kml-input-offset"]))] = (
            topic,
            raw(value),
            raw(key),
            hs,
        )
    return out


def _start(deployment: Deployment, home: Path, name: str, **changes) -> tuple[Proc, str]:
    port = free_port()
    settings = deployment.settings.replace(infer_stream_port=port, **changes)
    proc = Proc(name, home)
    proc.start(stream_argv(), env=infer_env(settings, deployment.id), cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    proc.wait_until(lambda: readiness_status(url, 1.0) == 200, f"{name} to be ready", 240)
    return proc, url


@pytest.fixture(scope="module")
def parity(stack, digits, tmp_path_factory):
    """N good records (some without keys, some with binary keys, some with headers) and a few
    undecodable ones, through stream mode and through the event path."""
    deployment = deploy(stack, digits, tmp_path_factory.mktemp("cache"), tflite=True)
    inputs = digits.inputs
    records = [
        (inputs[i % len(inputs)].tobytes(), _key(i), HEADERS if i % 7 == 0 else None)
        for i in range(N)
    ]
    records[N // 2 : N // 2] = [
        (value, f"bad-{j}".encode(), HEADERS) for j, value in enumerate(BAD)
    ]
    publish(stack.kafka_bootstrap, deployment.spec["input_topic"], records)
    home = tmp_path_factory.mktemp("stream")
    proc, url = _start(deployment, home, "stream")
    try:
        outputs = read_topic(stack.kafka_bootstrap, deployment.spec["output_topic"], N)
        dead = read_topic(stack.kafka_bootstrap, deployment.settings.dlq_topic, len(BAD))
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
            metrics = r.read().decode()
    finally:
        proc.stop()
    child = subprocess.run(
        [sys.executable, "-c", EVENT_PATH, str(N + len(BAD))],
        cwd=ROOT,
        env={**os.environ, **infer_env(deployment.settings, deployment.id)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    return deployment, outputs, dead, _from_child(json.loads(child.stdout)), metrics


def test_10000_records_give_exactly_10000_keyed_outputs(parity):
    deployment, outputs, _, _, _ = parity
    assert len(outputs) == N
    by_input = dict(_out(m) for m in outputs)
    assert len(by_input) == N  # one output per input: none repeated, none missing
    keys = Counter(m.key() for m in outputs)
    assert keys[b"\x00\xff\x00\x01\n\r"] == 1  # binary keys arrive byte for byte
    assert all(k for k in keys)


def test_each_output_is_identical_to_the_event_paths_for_the_same_record(parity):
    deployment, outputs, dead, event_path, _ = parity
    out_topic = deployment.spec["output_topic"]
    expected = {where: rec for where, rec in event_path.items() if rec[0] == out_topic}
    assert len(expected) == N
    got = dict(_out(m) for m in outputs)
    assert got.keys() == expected.keys()
    different = [where for where in got if got[where] != expected[where]]
    assert different == [], (got[different[0]], expected[different[0]])
    with_headers = [rec for rec in got.values() if dict(rec[3]).get("sensorid") == b"s-7"]
    assert len(with_headers) == len([i for i in range(N) if i % 7 == 0])
    assert dict(with_headers[0][3])["n"] == "é".encode()  # named as KafkaSource names it


def test_undecodable_records_are_dead_lettered_as_the_event_path_does(parity):
    deployment, _, dead, event_path, metrics = parity
    expected = {w: r for w, r in event_path.items() if r[0] == deployment.settings.dlq_topic}
    assert len(dead) == len(BAD) == len(expected)
    got = dict(_out(m) for m in dead)
    assert got == expected
    assert sorted(rec[1] for rec in got.values()) == sorted(BAD)  # the original bytes
    assert all(dict(rec[3])["kml-error-status"] == b"400" for rec in got.values())
    assert 'kml_infer_stream_records_total{outcome="dead_lettered"} 5.0' in metrics
    assert f'kml_infer_stream_records_total{{outcome="predicted"}} {float(N)}' in metrics


def test_a_consumer_killed_mid_stream_loses_nothing(stack, digits, tmp_path, record_property):
    """Consumer A starts; B joins (a rebalance: A hands partitions over with a commit); A is
    SIGKILLed mid-stream and restarted. Every input gets an output; repeats are counted."""
    deployment = deploy(stack, digits, tmp_path / "cache", tflite=True, partitions=4)
    total = 20_000
    inputs = digits.inputs
    publish(
        stack.kafka_bootstrap,
        deployment.spec["input_topic"],
        [(inputs[i % len(inputs)].tobytes(), f"k-{i}".encode(), None) for i in range(total)],
    )
    out_topic = deployment.spec["output_topic"]
    follower = _Follower(stack.kafka_bootstrap, out_topic)
    small = {"infer_stream_batch": 500}  # many commits, so the kill lands between some
    a, _ = _start(deployment, tmp_path / "a", "stream-a", **small)
    b = a_again = None
    try:
        follower.wait_until(total // 5)
        b, _ = _start(deployment, tmp_path / "b", "stream-b", **small)
        follower.wait_until(total // 2)
        pid = a.pid()
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)
        before_restart = follower.count()
        assert before_restart < total, "the stream finished before the kill: nothing was tested"
        a_again, _ = _start(deployment, tmp_path / "a", "stream-a", **small)
        follower.wait_until(total, timeout_s=180, distinct=True)
    finally:
        for proc in (a, b, a_again):
            if proc is not None:
                proc.stop()
        follower.close()
    seen = follower.keys
    missing = [i for i in range(total) if seen[f"k-{i}".encode()] == 0]
    duplicates = sum(seen.values()) - len(seen)
    record_property("duplicates", duplicates)
    print(
        f"\nstream kill test: {total} inputs, {sum(seen.values())} outputs, "
        f"{duplicates} repeated, {len(missing)} missing"
    )
    assert missing == []
    assert len(seen) == total
    # Work committed before the kill is not redone: at most what was in flight repeats.
    assert duplicates < total // 2


def test_kml_deploy_inference_local_runs_a_stream_deployment_as_a_process(stack, digits, tmp_path):
    base = deploy(stack, digits, tmp_path / "cache", tflite=True, partitions=1)
    registry = Registry.from_settings(stack)
    fields = {k: v for k, v in base.spec.items() if k not in ("id", "created", "schema_version")}
    spec = registry.create_inference(
        {**fields, "id": f"s-{uuid.uuid4().hex[:8]}", "mode": "stream"}
    )
    settings = base.settings.replace(
        inference_id=spec["id"], state_dir=str(tmp_path / "state"), infer_port=free_port()
    )
    result = CliRunner().invoke(
        app,
        ["deploy", "inference", spec["id"], "--local", "--state-dir", settings.state_dir],
        env=settings.to_env(),
    )
    try:
        assert result.exit_code == 0, result.output
        assert "streaming" in result.output
        assert not (tmp_path / "state" / "sources" / f"infer-{spec['id']}.yaml").exists()
        publish(
            stack.kafka_bootstrap,
            spec["input_topic"],
            [(digits.inputs[i].tobytes(), f"k-{i}".encode(), None) for i in range(50)],
        )
        outputs = read_topic(stack.kafka_bootstrap, spec["output_topic"], 50)
        assert sorted(m.key() for m in outputs) == sorted(f"k-{i}".encode() for i in range(50))
        assert json.loads(outputs[0].value())["values"]
    finally:
        assert stop_local_inference(settings, spec["id"])


class _Follower:
    """Counts the keys of a topic's records as they arrive (read from the beginning)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.keys: Counter = Counter()
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": f"follow-{uuid.uuid4()}"}
        )
        parts = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, 0) for p in parts])

    def _read(self) -> None:
        for m in self._consumer.consume(5000, timeout=0.2):
            if m.error() is None:
                self.keys[m.key()] += 1

    def count(self) -> int:
        self._read()
        return sum(self.keys.values())

    def wait_until(self, n: int, timeout_s: float = 120.0, distinct: bool = False) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._read()
            if (len(self.keys) if distinct else sum(self.keys.values())) >= n:
                return
        raise AssertionError(f"only {sum(self.keys.values())} outputs of {n} in {timeout_s:.0f}s")

    def close(self) -> None:
        self._consumer.close()
