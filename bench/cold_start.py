"""Cold start: infer (LiteRT against the Keras fallback) and train (event -> first epoch).

- infer: process start -> listening -> ready -> first prediction, under gunicorn, with an empty
  model cache (so it includes the MinIO download); the same model with and without
  ``model.tflite`` in the run (two inference specs), median of ``--starts`` each, interleaved.
- train: ``kml.training.request`` sent -> first epoch started, on a freshly started train function
  under gunicorn (1,797 digits records, 2 epochs), split into registry work (deployment, run
  claim), data read + decode, TensorFlow/Keras import, build + compile + fit setup, and the first
  epoch. The marks come from a probe installed by a gunicorn config file (``post_worker_init``):
  it wraps the train function's ``dataset.load`` and ``train_model`` and adds a Keras callback,
  appending timestamps to a file; it changes no behaviour. The first ``kml.training.progress``
  event (end of epoch 1, Kafka timestamp) cross-checks the last mark.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import requests

from bench.common import RESULTS, Result, bench_stack, console
from bench.infer_common import ROOT, Deployment, DigitsModel, deploy, digits_model, readiness, spawn
from kafkaml.events import TRAINING_PROGRESS
from kafkaml.kafka import ConfirmingProducer, end_offsets, ensure_topic, follow
from kafkaml.settings import Settings
from kml.dev.procs import Proc, free_port, gunicorn_argv
from storage.registry import Registry

PROBE = """
import json, os, time


def post_worker_init(worker):
    import functions.train.dataset as dataset
    import functions.train.service as service

    out = os.environ["BENCH_TRAIN_PROBE"]

    def mark(name):
        with open(out, "a") as f:
            f.write(json.dumps({"mark": name, "t": time.time()}) + "\\n")

    load, train_model = dataset.load, service.train_model

    def probed_load(*args, **kwargs):
        mark("data_read_begin")
        try:
            return load(*args, **kwargs)
        finally:
            mark("data_read_end")

    def probed_train_model(*args, **kwargs):
        mark("train_model")
        import keras
        mark("keras_imported")
        fit = keras.Model.fit

        class Probe(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                if epoch == 0:
                    mark("epoch_1_begin")

            def on_epoch_end(self, epoch, logs=None):
                if epoch == 0:
                    mark("epoch_1_end")

        def probed_fit(self, *a, callbacks=None, **kw):
            mark("fit_called")
            return fit(self, *a, callbacks=[*(callbacks or []), Probe()], **kw)

        keras.Model.fit = probed_fit
        try:
            return train_model(*args, **kwargs)
        finally:
            keras.Model.fit = fit

    dataset.load, service.train_model = probed_load, probed_train_model
"""
LITERT_STEPS = """
import json, time
import numpy as np
laps, last = {}, [time.perf_counter()]
def lap(name):
    now = time.perf_counter()
    laps[name], last[0] = now - last[0], now
import gunicorn.app.wsgiapp, gunicorn.workers.gthread
lap("import gunicorn")
import functions.infer.app
lap("import the infer app (Flask, confluent-kafka, prometheus-client, cloudevents)")
from functions.infer.model import fetch_model, load_model
from kafkaml.settings import Settings
from storage.registry import Registry
from storage.signed import SignedReader
settings = Settings.from_env()
registry = Registry(SignedReader.from_settings(settings))
lap("S3 reader (botocore signer, as infer does)")
spec = registry.get_inference(settings.inference_id)
lap("read the inference spec from MinIO")
file = fetch_model(registry, spec, settings.model_cache_dir)
lap("look up and download model.tflite")
import ai_edge_litert.interpreter
lap("import ai_edge_litert")
model = load_model(file)
lap("create the LiteRT interpreter")
model.predict(np.zeros((1, 8, 8), np.float32))
lap("first predict")
print(json.dumps(laps))
"""
"""The LiteRT start's steps, in one process and the main thread (the app loads the model in a
background thread, which a profiler of the main thread would not see)."""
TRAIN_SPLIT = (
    ("event -> registry work done (deployment, run claim)", "sent", "data_read_begin"),
    ("data read + decode + split (1,797 records)", "data_read_begin", "data_read_end"),
    ("TensorFlow/Keras import", "train_model", "keras_imported"),
    ("build + compile + fit setup", "keras_imported", "epoch_1_begin"),
    ("event -> first epoch started", "sent", "epoch_1_begin"),
    ("first epoch (incl. tracing)", "epoch_1_begin", "epoch_1_end"),
    ("event -> first progress event", "sent", "progress_1"),
)


# -- infer ----------------------------------------------------------------------------------------
def infer_start(dep: Deployment, instance: list, cache: Path) -> tuple[dict[str, float], str]:
    """Seconds from spawn to listening, ready and first prediction, the in-process load time;
    the runtime that served."""
    dep = Deployment(dep.settings.replace(model_cache_dir=str(cache)), dep.spec)
    served = spawn(dep)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {dep.settings.auth_token}"
    marks: dict[str, float] = {}
    try:
        while time.monotonic() - served.spawned < 300:
            if served.proc.pid() is None:
                raise RuntimeError("infer died:\n" + served.proc.log_file.read_text()[-2000:])
            status = readiness(session, served.url)
            now = time.monotonic() - served.spawned
            if status:
                marks.setdefault("listening", now)
            if status == 200:
                marks["ready"] = now
                break
            time.sleep(0.01)
        r = session.post(
            f"{served.url}/v1/models/{dep.id}:predict", json={"instances": [instance]}, timeout=60
        )
        r.raise_for_status()
        marks["first prediction"] = time.monotonic() - served.spawned
        meta = session.get(f"{served.url}/v1/models/{dep.id}", timeout=10).json()
        metrics = session.get(f"{served.url}/metrics", timeout=10).text
        load = [
            line.split()[1]
            for line in metrics.splitlines()
            if line.startswith("kml_infer_model_load_seconds ")
        ]
        marks["model fetch + load (in the process)"] = float(load[0]) if load else float("nan")
    finally:
        served.stop()
    return marks, meta["runtime"]


def infer_cold_starts(settings: Settings, model: DigitsModel, starts: int, result: Result) -> None:
    deps = {
        "LiteRT": deploy(settings, model, tflite=True),
        "Keras": deploy(settings, model, tflite=False),
    }
    instance = model.inputs[0].tolist()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in deps}
    for i in range(starts):
        for name, dep in deps.items():
            cache = Path(settings.state_dir) / f"cache-{uuid.uuid4().hex[:8]}"
            marks, runtime = infer_start(dep, instance, cache)
            if runtime != name.lower():
                raise RuntimeError(f"the {name} deployment was served by another runtime")
            console.print(f"infer {name} start {i + 1}: {marks}")
            runs[name].append(marks)
    for name, marks in runs.items():
        for interval in marks[0]:
            values = [m[interval] for m in marks]
            result.rows.append(
                {
                    "function": f"infer ({name})",
                    "interval": f"spawn -> {interval}" if "load" not in interval else interval,
                    "median s": statistics.median(values),
                    "runs": ", ".join(f"{v:.2f}" for v in values),
                }
            )
    first = {
        name: statistics.median(m["first prediction"] for m in marks)
        for name, marks in runs.items()
    }
    RESULTS.mkdir(exist_ok=True)
    laps = litert_steps(settings, deps["LiteRT"], result)
    result.ratios["infer cold start (first prediction): Keras / LiteRT"] = (
        first["Keras"] / first["LiteRT"]
    )
    result.ratios["infer cold start with LiteRT: seconds / 1 s"] = first["LiteRT"]
    result.targets["infer cold start with LiteRT: seconds / 1 s"] = "<= 1x (1 s)"
    if first["LiteRT"] > 1.0:
        listening = statistics.median(m["listening"] for m in runs["LiteRT"])
        result.notes.append(
            f"LiteRT cold start misses 1 s: {listening:.2f}s pass before gunicorn listens "
            "(interpreter, gunicorn, the app's imports: Flask, confluent-kafka, "
            "prometheus-client, cloudevents), the rest loading the model, where importing "
            f"botocore's signer takes "
            f"{laps.get('S3 reader (botocore signer, as infer does)', float('nan')):.2f}s against "
            f"{sum(v for k, v in laps.items() if 'S3' not in k and 'import' not in k):.2f}s "
            "for the spec, the download, the interpreter and the first predict (profile: "
            "bench/results/cold_start_litert.pyinstrument.txt). What would fix it: fewer imports "
            "before listening (mount the model into the pod), or min-scale 1 where the first "
            "request must not wait; the Keras fallback's extra time is the TensorFlow import."
        )


def litert_steps(settings: Settings, dep: Deployment, result: Result) -> dict[str, float]:
    """Time the LiteRT start's steps (notes), and profile them with pyinstrument into
    ``bench/results/cold_start_litert.pyinstrument.txt``."""
    laps: dict[str, float] = {}
    for profiled in (False, True):
        env = {
            **dep.settings.replace(
                model_cache_dir=str(Path(settings.state_dir) / f"cache-{uuid.uuid4().hex[:8]}"),
            ).to_env()
        }
        argv = [sys.executable, "-c", LITERT_STEPS]
        if profiled:
            argv = [
                sys.executable,
                "-m",
                "pyinstrument",
                "-r",
                "text",
                "-o",
                str(RESULTS / "cold_start_litert.pyinstrument.txt"),
                "-c",
                LITERT_STEPS,
            ]
        done = subprocess.run(
            argv, env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            result.notes.append(f"the LiteRT start could not be profiled: {done.stderr[-300:]}")
            return {}
        if not profiled:
            laps = json.loads(done.stdout.strip().splitlines()[-1])
    total = sum(laps.values())
    result.notes.append(
        f"LiteRT start, step by step in one process ({total:.2f}s in all, Python's own start "
        "not included): "
        + "; ".join(f"{k} {v:.2f}s" for k, v in sorted(laps.items(), key=lambda kv: -kv[1]))
    )
    return laps


# -- train ----------------------------------------------------------------------------------------
def train_setup(settings: Settings, model: DigitsModel) -> tuple[Settings, dict]:
    """A registered model, a deployment and the digits on a topic; the request's data."""
    unique = uuid.uuid4().hex[:8]
    settings = settings.replace(results_topic=f"bench-results-{unique}")
    ensure_topic(settings.kafka_bootstrap, settings.results_topic, 1)
    registry = Registry.from_settings(settings)
    registry.ensure_ready()
    name = f"bench-digits-{unique}"
    registry.register_model(
        name,
        {
            "description": "digits MLP",
            "format": "keras_json",
            "keras_json": model.keras_json,
            "compile": {
                "optimizer": "adam",
                "loss": "sparse_categorical_crossentropy",
                "metrics": ["accuracy"],
            },
        },
    )
    deployment = registry.create_deployment(
        {
            "models": [name],
            "batch_size": 32,
            "epochs": 2,
            "shuffle": True,
            "seed": 7,
            "fit_kwargs": {},
            "evaluate_kwargs": {},
        }
    )
    topic = f"bench-train-{unique}"
    ensure_topic(settings.kafka_bootstrap, topic, 3)
    labels = np.load(model.folder / "labels.npy")
    producer = ConfirmingProducer(settings.kafka_bootstrap)
    for i, (x, y) in enumerate(zip(model.inputs, labels, strict=True)):
        producer.produce(topic, x.tobytes(), bytes([int(y)]), partition=i % 3)
    producer.flush()
    data = {
        "deployment_id": deployment["id"],
        "topic": ",".join(str(r) for r in producer.ranges(topic)),
        "input_format": "RAW",
        "input_config": {
            "data_type": "float32",
            "data_reshape": "8 8",
            "label_type": "uint8",
            "label_reshape": "1",
        },
        "validation_rate": 0.1,
        "test_rate": 0.1,
        "total_msg": len(labels),
    }
    return settings, data


def first_progress(settings: Settings, start: dict[int, int], found: dict[str, float]) -> None:
    for msg in follow(settings.kafka_bootstrap, settings.results_topic, start, idle_timeout_s=300):
        if json.loads(msg.value()).get("type") == TRAINING_PROGRESS:
            found["progress_1"] = msg.timestamp()[1] / 1000
            return


def train_start(settings: Settings, model: DigitsModel) -> dict[str, float]:
    settings, data = train_setup(settings, model)
    home = Path(settings.state_dir) / f"train-{uuid.uuid4().hex[:8]}"
    home.mkdir(parents=True)
    (home / "probe.py").write_text(PROBE)
    probe = home / "marks.jsonl"
    port = free_port()
    proc = Proc("train", home)
    proc.start(
        gunicorn_argv("train", port, extra=("-c", str(home / "probe.py"))),
        env={**settings.to_env(), "BENCH_TRAIN_PROBE": str(probe)},
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {settings.auth_token}"
        proc.wait_until(lambda: readiness(session, url) == 200, "train to be ready", 120)
        start = end_offsets(settings.kafka_bootstrap, settings.results_topic)
        marks: dict[str, float] = {}
        watcher = threading.Thread(
            target=first_progress, args=(settings, start, marks), daemon=True
        )
        watcher.start()
        marks["sent"] = time.time()
        r = session.post(
            url + "/",
            json=data,
            timeout=660,
            headers={
                "ce-specversion": "1.0",
                "ce-id": uuid.uuid4().hex,
                "ce-source": "/bench/cold_start",
                "ce-type": "kml.training.request",
                "content-type": "application/json",
            },
        )
        if r.status_code != 200:
            raise RuntimeError(f"training failed: {r.status_code} {r.text[:300]}")
        watcher.join(30)
    finally:
        proc.stop()
    for line in probe.read_text().splitlines():
        entry = json.loads(line)
        marks.setdefault(entry["mark"], entry["t"])
    return marks


def train_cold_starts(settings: Settings, model: DigitsModel, starts: int, result: Result) -> None:
    runs = [train_start(settings, model) for _ in range(starts)]
    for label, begin, end in TRAIN_SPLIT:
        values = [m[end] - m[begin] for m in runs if begin in m and end in m]
        if not values:
            continue
        result.rows.append(
            {
                "function": "train",
                "interval": label,
                "median s": statistics.median(values),
                "runs": ", ".join(f"{v:.2f}" for v in values),
            }
        )
        console.print(result.rows[-1])
    imports = [
        m["keras_imported"] - m["train_model"]
        for m in runs
        if "keras_imported" in m and "train_model" in m
    ]
    if imports:
        result.notes.append(
            f"train: importing TensorFlow/Keras ({statistics.median(imports):.1f}s) happens on "
            "the first event, not at process start; importing it when the app is created would "
            "move it before readiness (Knative's readiness gate hides it from the event)."
        )


def main(argv: list[str] | None = None) -> Result:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=3, help="infer starts per runtime")
    parser.add_argument("--train-starts", type=int, default=1)
    args = parser.parse_args(argv)
    result = Result("cold_start", "Cold start: infer LiteRT vs Keras; train event -> first epoch")
    with bench_stack() as settings:
        model = digits_model(settings)
        infer_cold_starts(settings, model, args.starts, result)
        if args.train_starts:
            train_cold_starts(settings, model, args.train_starts, result)
    result.show()
    result.save()
    return result


if __name__ == "__main__":
    main()
