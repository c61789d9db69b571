"""Infer, measured: cold start (LiteRT and Keras), HTTP latency, records/s through the Kafka path.

    python -m bench.infer_quick [--records 5000] [--model-dir DIR]

Runs against a fresh real Kafka + MinIO (or the running stack with KML_BENCH_USE_RUNNING=1),
infer under real gunicorn (gthread, 16 threads, 1 worker), and a KafkaSource stand-in that
delivers each record as a binary CloudEvent with 16 in flight. Cold start is process start ->
first successful prediction, with an empty model cache (so it includes the MinIO download).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from bench.common import RESULTS, bench_stack, console, machine
from functions.infer.local import gunicorn_argv, infer_env
from kafkaml.dev.procs import Proc, free_port
from tests.functions.infer.conftest import ROOT, Digits, deploy, publish, read_topic
from tests.functions.infer.kafkasource_driver import deliver_topic


def train(model_dir: Path | None, scratch: Path) -> Digits:
    import numpy as np

    folder = model_dir or scratch / "digits"
    if not (folder / "model.tflite").is_file():
        subprocess.run([sys.executable, "-m", "tests.functions.infer.make_model", str(folder)],
                       cwd=ROOT, check=True, capture_output=True, timeout=600)
    return Digits(folder, np.load(folder / "inputs.npy"), np.load(folder / "labels.npy"),
                  np.load(folder / "keras_predictions.npy"))


def cold_start(deployment, home: Path, instance: list) -> tuple[float, float, str, Proc]:
    """Seconds from spawn to first prediction and to readiness; the runtime; the process."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = Proc("infer", home)
    started = time.monotonic()
    proc.start(gunicorn_argv(port), env=infer_env(deployment.settings, deployment.id), cwd=ROOT)
    ready_s = first_s = 0.0
    session = requests.Session()
    while time.monotonic() - started < 300:
        try:
            if not ready_s and session.get(f"{url}/health/readiness", timeout=2).ok:
                ready_s = time.monotonic() - started
            r = session.post(f"{url}/v1/models/{deployment.id}:predict",
                             json={"instances": [instance]}, timeout=10)
            if r.status_code == 200:
                first_s = time.monotonic() - started
                break
        except requests.RequestException:  # refused while booting, or slow while loading
            pass
        time.sleep(0.01)
    runtime = session.get(f"{url}/v1/models/{deployment.id}", timeout=5).json()["runtime"]
    proc.url = url  # type: ignore[attr-defined]
    return first_s, ready_s or first_s, runtime, proc


def cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) of every process in the group ``pgid`` (gunicorn and workers)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
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


def latencies(url: str, name: str, instances: list, concurrency: int) -> dict[str, float]:
    local = threading.local()

    def call(instance) -> float:
        session = getattr(local, "session", None) or requests.Session()  # keep-alive per thread
        local.session = session
        t = time.perf_counter()
        r = session.post(f"{url}/v1/models/{name}:predict", json={"instances": [instance]},
                         timeout=30)
        assert r.status_code == 200, r.text
        return (time.perf_counter() - t) * 1000

    started = time.perf_counter()
    if concurrency == 1:
        ms = [call(i) for i in instances]
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            ms = list(pool.map(call, instances))
    took = time.perf_counter() - started
    ms.sort()
    return {"p50_ms": round(statistics.median(ms), 2), "p99_ms": round(ms[int(len(ms) * .99)], 2),
            "requests_per_s": round(len(ms) / took, 1), "concurrency": concurrency}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--model-dir", type=Path, default=None)
    args = parser.parse_args()
    out: dict[str, Any] = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="kml-infer-bench-") as scratch_dir, \
            bench_stack() as stack:
        scratch = Path(scratch_dir)
        digits = train(args.model_dir, scratch)
        instance = digits.inputs[0].tolist()
        procs = []
        try:
            for runtime, tflite in (("keras", False), ("litert", True)):
                dep = deploy(stack, digits, scratch / f"cache-{runtime}", tflite=tflite)
                first, ready, got, proc = cold_start(dep, scratch / f"p-{runtime}", instance)
                procs.append(proc)
                out[f"cold_start_{runtime}"] = {"first_prediction_s": round(first, 2),
                                                "ready_s": round(ready, 2), "runtime": got}
                console.print(f"cold start {runtime}: first prediction {first:.2f}s "
                              f"(ready {ready:.2f}s)")
            url = procs[-1].url  # type: ignore[attr-defined]
            inputs = [x.tolist() for x in digits.inputs[:800]]
            latencies(url, dep.id, inputs[:50], 1)  # warm up
            out["http_sequential"] = latencies(url, dep.id, inputs[:400], 1)
            out["http_concurrent"] = latencies(url, dep.id, inputs, 16)
            console.print(f"HTTP sequential {out['http_sequential']}")
            console.print(f"HTTP 16 concurrent {out['http_concurrent']}")
            n = args.records
            publish(stack.kafka_bootstrap, dep.spec["input_topic"],
                    [(digits.inputs[i % len(digits.inputs)].tobytes(), f"k-{i}".encode(), [])
                     for i in range(n)])
            pgid = procs[-1].pid()
            cpu_before = cpu_seconds(pgid)
            t = time.perf_counter()
            done = deliver_topic(stack.kafka_bootstrap, dep.spec["input_topic"], url + "/", n,
                                 concurrency=16)
            took = time.perf_counter() - t
            server_cpu = cpu_seconds(pgid) - cpu_before
            outputs = read_topic(stack.kafka_bootstrap, dep.spec["output_topic"], n)
            ok = sum(d.status == 200 for d in done)
            out["kafka_path"] = {"records": n, "ok": ok, "outputs": len(outputs),
                                 "seconds": round(took, 2), "records_per_s": round(n / took, 1),
                                 "in_flight": 16,
                                 "server_cpu_ms_per_record": round(server_cpu / n * 1000, 2)}
            console.print(f"Kafka path {out['kafka_path']}")
            metrics = requests.get(f"{url}/metrics", timeout=5).text
            out["batches"] = {line.split(" ")[0]: float(line.split(" ")[1])
                              for line in metrics.splitlines()
                              if line.startswith(("kml_infer_batch_size_count",
                                                  "kml_infer_batch_size_sum"))}
        finally:
            for proc in procs:
                proc.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "infer_quick.json").write_text(json.dumps(out, indent=1))
    console.print_json(json.dumps(out))


if __name__ == "__main__":
    main()
