"""What the inference benchmarks share: the digits model, deployments, infer under gunicorn, the
local KafkaSource bridge, record timestamps, and the Kafka-ML-style loop.

TensorFlow and LiteRT cannot share a process, and the driver measures a LiteRT server, so all
TensorFlow work runs in children: ``python -m bench.infer_common train OUT`` (the model) and
``python -m bench.infer_common kafka-ml-loop ...`` (the baseline). The driver imports neither.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests
from confluent_kafka import Consumer, Producer, TopicPartition

from kafkaml.kafka import end_offsets, ensure_topic
from kafkaml.settings import Settings
from kml.dev.bridge import read_status
from kml.dev.inference import gunicorn_argv, home_of, infer_env, register_with_bridge
from kml.dev.procs import Proc, free_port
from storage.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
MODEL = "digits"
MODEL_VERSION = "2"
"""Bump when ``train`` changes: the cached model is reused by every benchmark until then."""
RAW_CONFIG = {"data_type": "float32", "data_reshape": "8 8"}


# -- the model ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DigitsModel:
    """``model.keras``, ``model.tflite``, its Keras JSON and the inputs it was trained on
    (``inputs.npy``: float32 [n, 8, 8] in [0, 1]; ``labels.npy``: uint8 [n])."""

    folder: Path
    inputs: np.ndarray

    @property
    def keras_json(self) -> str:
        return (self.folder / "model.json").read_text()

    def payload(self, i: int) -> bytes:
        """Input ``i`` (cycling) as a RAW float32 8x8 record."""
        return self.inputs[i % len(self.inputs)].tobytes()


def digits_model(settings: Settings) -> DigitsModel:
    """The trained digits model, trained once in a child process and cached under cache_dir."""
    folder = Path(settings.cache_dir) / "bench" / f"digits-model-v{MODEL_VERSION}"
    if not (folder / "done").is_file():
        done = subprocess.run(
            [sys.executable, "-m", "bench.infer_common", "train", str(folder)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if done.returncode != 0:
            raise RuntimeError("training the benchmark model failed:\n" + done.stderr[-3000:])
    return DigitsModel(folder, np.load(folder / "inputs.npy"))


def train(out: Path, epochs: int = 3) -> None:
    """(child) A small Dense classifier on sklearn digits, saved as .keras, .tflite and JSON."""
    import keras
    import tensorflow as tf
    from sklearn.datasets import load_digits

    keras.utils.set_random_seed(7)
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32).reshape(-1, 8, 8)
    model = keras.Sequential(
        [
            keras.Input((8, 8)),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, digits.target, epochs=epochs, batch_size=64, verbose=0)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    (out / "model.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    (out / "model.json").write_text(model.to_json())
    np.save(out / "inputs.npy", x)
    np.save(out / "labels.npy", digits.target.astype(np.uint8))
    (out / "done").write_text("ok")


# -- deployments and processes ------------------------------------------------------------------
@dataclass(frozen=True)
class Deployment:
    settings: Settings
    spec: dict[str, Any]

    @property
    def id(self) -> str:
        return self.spec["id"]


def deploy(
    stack: Settings,
    model: DigitsModel,
    *,
    tflite: bool,
    partitions: int = 3,
    cache_dir: Path | None = None,
) -> Deployment:
    """Store the run's artifacts (with or without model.tflite), create the inference spec and
    its topics; the settings name the deployment, its own dead-letter topic and model cache."""
    unique = uuid.uuid4().hex[:8]
    registry = Registry.from_settings(stack)
    registry.ensure_ready()
    run_id = f"bench-run-{unique}"
    for filename in ["model.keras", "model.tflite"] if tflite else ["model.keras"]:
        registry.store.put(
            registry.run_artifact_key(run_id, MODEL, filename),
            (model.folder / filename).read_bytes(),
        )
    spec = registry.create_inference(
        {
            "id": f"bench-{unique}",
            "run_id": run_id,
            "model": MODEL,
            "input_format": "RAW",
            "input_config": RAW_CONFIG,
            "input_topic": f"bench-in-{unique}",
            "output_topic": f"bench-out-{unique}",
            "min_scale": 0,
            "max_scale": 1,
            "target_concurrency": 50,
        }
    )
    cache = cache_dir or Path(stack.state_dir) / f"model-cache-{unique}"
    settings = stack.replace(
        inference_id=spec["id"], dlq_topic=f"bench-dlq-{unique}", model_cache_dir=str(cache)
    )
    for topic, n in (
        (spec["input_topic"], partitions),
        (spec["output_topic"], partitions),
        (settings.dlq_topic, 1),
    ):
        ensure_topic(stack.kafka_bootstrap, topic, n)
    return Deployment(settings, spec)


@dataclass
class Served:
    """One infer process under gunicorn: its URL, process, and when it was spawned (monotonic)."""

    url: str
    proc: Proc
    spawned: float

    def stop(self) -> None:
        self.proc.stop()


def spawn(deployment: Deployment) -> Served:
    """Start infer for ``deployment`` under gunicorn (the function's own command line), in the
    folder ``kml deploy inference --local`` would use."""
    port = free_port()
    proc = Proc("infer", home_of(deployment.settings, deployment.id))
    spawned = time.monotonic()
    proc.start(gunicorn_argv(port), env=infer_env(deployment.settings, deployment.id), cwd=ROOT)
    return Served(f"http://127.0.0.1:{port}", proc, spawned)


def readiness(session: requests.Session, url: str) -> int:
    try:
        return session.get(f"{url}/health/readiness", timeout=2).status_code
    except requests.RequestException:  # not listening yet, or too busy to answer in time
        return 0


def wait_ready(served: Served, timeout_s: float = 300.0, poll_s: float = 0.01) -> float:
    """Poll readiness until 200; the monotonic time it first answered 200."""
    session = requests.Session()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if served.proc.pid() is None:
            raise RuntimeError("infer died:\n" + served.proc.log_file.read_text()[-3000:])
        if readiness(session, served.url) == 200:
            return time.monotonic()
        time.sleep(poll_s)
    served.stop()
    raise RuntimeError("infer not ready in time:\n" + served.proc.log_file.read_text()[-3000:])


def serve(deployment: Deployment) -> Served:
    served = spawn(deployment)
    wait_ready(served)
    return served


def batch_stats(url: str) -> tuple[float, float]:
    """The micro-batcher's (model calls, rows) so far, from ``/metrics``."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    found = dict(re.findall(r"^kml_infer_batch_size_(count|sum) (\S+)$", text, re.M))
    return float(found.get("count", 0)), float(found.get("sum", 0))


def cpu_seconds(pgid: int | None) -> float:
    """CPU time (user + system) of every process in the group ``pgid`` (gunicorn and workers)."""
    if pgid is None:
        return 0.0
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


# -- the local KafkaSource bridge ---------------------------------------------------------------
def start_bridge(
    deployment: Deployment, served: Served, *, ordering: str = "unordered", timeout_s: float = 60.0
) -> Proc:
    """``python -m kml.dev.bridge`` playing the deployment's KafkaSource (with ``ordering``),
    waiting until its consumer has partitions. Its manifests hold only the dead-letter sink."""
    settings = deployment.settings
    state = Path(settings.state_dir).resolve()
    settings = settings.replace(state_dir=str(state))
    source_file = register_with_bridge(settings, deployment.id, served.url)
    source_file.write_text(
        source_file.read_text().replace("ordering: ordered", f"ordering: {ordering}")
    )
    manifests = state / "bench-manifests"
    manifests.mkdir(exist_ok=True)
    (manifests / "kustomization.yaml").write_text("resources:\n  - dlq.yaml\n")
    (manifests / "dlq.yaml").write_text(
        "apiVersion: eventing.knative.dev/v1alpha1\nkind: KafkaSink\n"
        f"metadata:\n  name: {settings.dlq_topic}\nspec:\n  topic: {settings.dlq_topic}\n"
    )
    proc = Proc("bridge", state / "bridge")
    (state / "bridge" / "status.json").unlink(missing_ok=True)
    proc.start(
        [sys.executable, "-m", "kml.dev.bridge", "--manifests", str(manifests)],
        env=settings.replace(log_level="WARNING").to_env(),
        cwd=ROOT,
    )

    def assigned() -> bool:
        status = read_status(state) or {}
        return any(s["assigned"] for s in status.get("sources", []) if deployment.id in s["name"])

    proc.wait_until(assigned, "the bridge to join the inference source's group", timeout_s)
    return proc


# -- records and their timestamps ---------------------------------------------------------------
class Stamps:
    """CreateTime (ms) of records by key, filled from delivery reports or a follower."""

    def __init__(self) -> None:
        self.by_key: dict[bytes, int] = {}
        self.lock = threading.Lock()

    def add(self, key: bytes, ts_ms: int) -> None:
        with self.lock:
            self.by_key[key] = ts_ms

    def count(self, prefix: bytes) -> int:
        with self.lock:
            return sum(1 for k in self.by_key if k.startswith(prefix))


def rate_producer(bootstrap: str) -> tuple[Producer, Stamps]:
    stamps = Stamps()
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 1,
            "acks": 1,
            "queue.buffering.max.messages": 200_000,
        }
    )
    return producer, stamps


def publish(
    producer: Producer,
    stamps: Stamps,
    topic: str,
    model: DigitsModel,
    prefix: str,
    count: int,
    rate: float | None = None,
) -> float:
    """Produce ``count`` records keyed ``<prefix><i>`` at ``rate`` per second (None: as fast as
    possible); returns the seconds it took. Input timestamps come from the delivery reports."""

    def delivered(err: Any, msg: Any) -> None:
        if err is None:
            stamps.add(msg.key(), msg.timestamp()[1])

    started = time.perf_counter()
    for i in range(count):
        if rate is not None:
            wait = started + i / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        while True:
            try:
                producer.produce(
                    topic, model.payload(i), f"{prefix}{i}".encode(), on_delivery=delivered
                )
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    took = time.perf_counter() - started
    producer.flush(60)
    return took


class Follower:
    """Reads a topic from its current end in a thread, keeping each record's CreateTime by key."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.stamps = Stamps()
        self._stop = threading.Event()
        start = end_offsets(bootstrap, topic)
        deadline = time.monotonic() + 30
        while not start and time.monotonic() < deadline:  # a topic created a moment ago
            time.sleep(0.2)
            start = end_offsets(bootstrap, topic)
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "enable.auto.commit": False,
                "group.id": f"bench-follow-{uuid.uuid4().hex[:8]}",
            }
        )
        self._consumer.assign([TopicPartition(topic, p, o) for p, o in start.items()])
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-follower")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self._consumer.consume(1000, timeout=0.1):
                if msg.error() is None and msg.key() is not None:
                    self.stamps.add(msg.key(), msg.timestamp()[1])

    def wait_for(self, prefix: str, count: int, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.stamps.count(prefix.encode()) >= count:
                break
            time.sleep(0.05)
        return self.stamps.count(prefix.encode())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


@dataclass(frozen=True)
class Phase:
    """End-to-end latencies (ms, output CreateTime - input CreateTime) and records/s of one
    phase: records done / (last output - first input)."""

    sent: int
    done: int
    latencies_ms: list[float]
    records_per_s: float


def phase(inputs: Stamps, outputs: Stamps, prefix: str) -> Phase:
    p = prefix.encode()
    with inputs.lock, outputs.lock:
        pairs = [
            (t, outputs.by_key[k])
            for k, t in inputs.by_key.items()
            if k.startswith(p) and k in outputs.by_key
        ]
        sent = sum(1 for k in inputs.by_key if k.startswith(p))
    if not pairs:
        return Phase(sent, 0, [], 0.0)
    span_s = (max(o for _, o in pairs) - min(i for i, _ in pairs)) / 1000
    return Phase(
        sent,
        len(pairs),
        [float(o - i) for i, o in pairs],
        len(pairs) / span_s if span_s > 0 else float("nan"),
    )


# -- the Kafka-ML-style loop (child process) ----------------------------------------------------
def kafka_ml_loop(
    bootstrap: str, model_path: str, in_topic: str, out_topic: str, count: int, timeout_s: float
) -> None:
    """(child) Kafka-ML's inference loop: poll one record, ``model.predict`` it, produce the
    result, commit every 16. Prints ``ready`` once it holds partitions, then a JSON summary."""
    import keras

    model = keras.saving.load_model(model_path, safe_mode=True)
    model.predict(np.zeros((1, 8, 8), np.float32), verbose=0)  # warm: not part of the loop
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"kafka-ml-{in_topic}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    assigned = threading.Event()
    consumer.subscribe([in_topic], on_assign=lambda c, ps: assigned.set())
    producer = Producer({"bootstrap.servers": bootstrap})
    while not assigned.is_set():
        consumer.poll(0.1)
    print("ready", flush=True)
    done, deadline = 0, time.monotonic() + timeout_s
    while done < count and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is None or msg.error() is not None:
            continue
        x = np.frombuffer(msg.value(), dtype=np.float32).reshape(1, 8, 8)
        y = model.predict(x, verbose=0)
        producer.produce(out_topic, json.dumps({"values": y[0].tolist()}).encode(), msg.key())
        producer.poll(0)
        done += 1
        if done % 16 == 0:
            consumer.commit(asynchronous=False)
    producer.flush(30)
    consumer.commit(asynchronous=False)
    consumer.close()
    print(json.dumps({"done": done}), flush=True)


def start_kafka_ml_loop(
    bootstrap: str, model: DigitsModel, in_topic: str, out_topic: str, count: int, timeout_s: float
) -> subprocess.Popen:
    """The baseline in a child, returned once it holds its partitions (TensorFlow loaded)."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.infer_common",
            "kafka-ml-loop",
            bootstrap,
            str(model.folder / "model.keras"),
            in_topic,
            out_topic,
            str(count),
            str(timeout_s),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if line.strip() != "ready":
        child.kill()
        raise RuntimeError(f"the Kafka-ML-style loop did not start: {line!r}")
    return child


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.infer_common")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("train").add_argument("out", type=Path)
    loop = sub.add_parser("kafka-ml-loop")
    for name in ("bootstrap", "model_path", "in_topic", "out_topic"):
        loop.add_argument(name)
    loop.add_argument("count", type=int)
    loop.add_argument("timeout_s", type=float)
    args = parser.parse_args(argv)
    if args.cmd == "train":
        train(args.out)
    else:
        kafka_ml_loop(
            args.bootstrap,
            args.model_path,
            args.in_topic,
            args.out_topic,
            args.count,
            args.timeout_s,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
