"""Training end to end against Kafka-ML's real data path, on the same topic in the same run.

N records (default 200,000; ``KML_BENCH_TRAIN_RECORDS``) of 100 float32 features and a uint8
label on one partition; the same 100-64-10 MLP (Adam, sparse categorical crossentropy,
accuracy), batch 32, 5 epochs (``KML_BENCH_TRAIN_EPOCHS``), no validation or test split.

- Kafka-ML: tensorflow-io 0.37.1 ``KafkaDataset`` -> ``map(decode_raw)`` -> ``batch`` -> ``fit``
  with TensorFlow 2.16.2, Kafka re-read every epoch, as Kafka-ML's training job does. It runs
  in a side virtual environment under ``KML_CACHE_DIR`` (default ``~/.cache/kml``), created on
  first use by pip from the ordinary index; when that fails the row is skipped, saying why.
- ours: the train function's path: ``read_offset_ranges`` once, ``RawCodec`` decode, the seeded
  split, ``train_model`` (steps per execution from the data size, NumPy arrays into fit).

Both run in their own process (TensorFlow imported before the clock starts); end to end is
from the first Kafka read to the end of the last epoch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

from bench.common import Result, Timer, bench_stack, console
from kafkaml.kafka import ConfirmingProducer, ensure_topic

ROOT = Path(__file__).resolve().parent.parent
FEATURES, CLASSES, BATCH = 100, 10, 32
SIDE_PACKAGES = ("tensorflow==2.16.2", "tensorflow-io==0.37.1")
CONFIG = {"data_type": "float32", "data_reshape": str(FEATURES), "label_type": "uint8"}

KAFKA_ML = textwrap.dedent(
    """
    import json, sys, time
    import tensorflow as tf
    import tensorflow_io.kafka as kafka_io

    bootstrap, topic, start, end, epochs, batch = sys.argv[1:7]
    start, end, epochs, batch = int(start), int(end), int(epochs), int(batch)
    tf.keras.utils.set_random_seed(1)
    model = tf.keras.Sequential([
        tf.keras.Input((100,)),
        tf.keras.layers.Dense(64, activation="relu"),
        tf.keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])

    def decode_raw(x, y):  # Kafka-ML's RAW decoder
        x = tf.reshape(tf.io.decode_raw(x, tf.float32), [100])
        y = tf.reshape(tf.io.decode_raw(y, tf.uint8), [])
        return x, y

    started = time.perf_counter()
    dataset = kafka_io.KafkaDataset(
        [f"{topic}:0:{start}:{end - 1}"], servers=bootstrap, group="bench-kafka-ml",
        eof=True, message_key=True,
    ).map(decode_raw).batch(batch)
    history = model.fit(dataset, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - started
    read = sum(int(tf.shape(x)[0]) for x, _ in dataset)
    print(json.dumps({"seconds": seconds, "accuracy": history.history["accuracy"][-1],
                      "loss": history.history["loss"][-1], "records": read}))
    """
)

OURS = textwrap.dedent(
    """
    import json, sys, time
    import keras  # imported before the clock starts, as the train function does at start
    from functions.train.dataset import decode, split
    from functions.train.training import steps_per_execution, train_model
    from kafkaml.kafka import read_offset_ranges
    from kafkaml.wire import OffsetRange, parse_control_message

    bootstrap, topic, start, end, epochs, batch = sys.argv[1:7]
    start, end, epochs, batch = int(start), int(end), int(epochs), int(batch)
    model = keras.Sequential([
        keras.Input((100,)),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    stored = {  # the records as the registry stores them
        "name": "mlp", "version": 1, "schema_version": 1, "created": "2026-01-01T00:00:00Z",
        "format": "keras_json", "keras_json": model.to_json(),
        "compile": {"optimizer": "adam", "loss": "sparse_categorical_crossentropy",
                    "metrics": ["accuracy"]},
    }
    deployment = {
        "id": "bench", "description": "", "configuration": None, "models": ["mlp@1"],
        "batch_size": batch, "epochs": epochs, "shuffle": True, "seed": 1,
        "learning_rate": None, "fit_kwargs": {}, "evaluate_kwargs": {}, "schema_version": 1,
        "created": "2026-01-01T00:00:00Z",
    }
    msg = parse_control_message(json.dumps({
        "topic": f"{topic}:0:{start}:{end}", "input_format": "RAW",
        "input_config": json.loads(sys.argv[7]), "validation_rate": 0, "test_rate": 0,
    }).encode(), None, deployment_id=deployment["id"])
    started = time.perf_counter()
    records = read_offset_ranges(bootstrap, [OffsetRange(topic, 0, start, end)], timeout_s=60)
    read_s = time.perf_counter() - started
    x, y = decode(msg, records.values, records.keys)
    data = split(x, y, 0, 0, 1)
    trained = train_model(stored, deployment, data, lambda e, m: None, None)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "read_seconds": read_s,
                      "fit_seconds": trained.metrics["fit_seconds"],
                      "accuracy": trained.history["accuracy"][-1],
                      "loss": trained.history["loss"][-1],
                      "steps_per_execution": steps_per_execution(len(data.train), batch)}))
    """
)


def cache_dir() -> Path:
    return Path(os.environ.get("KML_CACHE_DIR") or Path.home() / ".cache" / "kml")


def side_python() -> tuple[Path | None, str]:
    """The side environment's Python with TensorFlow 2.16 and tensorflow-io 0.37.1, created on
    first use; (None, why) when it cannot be."""
    venv = cache_dir() / "bench" / "kafkaml-tf216"
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import tensorflow_io.kafka, tensorflow"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python, "ready"
    console.print(f"creating {venv} with {' '.join(SIDE_PACKAGES)} (once; ~600 MB)")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *SIDE_PACKAGES, "numpy<2"],
            check=True,
            timeout=1800,
        )
    except (subprocess.SubprocessError, OSError) as e:
        return None, f"cannot install {' '.join(SIDE_PACKAGES)}: {e}"
    if subprocess.run(check, capture_output=True).returncode != 0:
        return None, "installed, but tensorflow_io.kafka does not import"
    return python, "created"


def publish(bootstrap: str, topic: str, n: int) -> tuple[int, int]:
    """``n`` records on partition 0; labels the argmax of the first 10 features (learnable)."""
    ensure_topic(bootstrap, topic, partitions=1)
    rng = np.random.default_rng(0)
    producer = ConfirmingProducer(
        bootstrap,
        timeout_s=120,
        config={"linger.ms": 20, "batch.size": 1_000_000, "queue.buffering.max.messages": 500_000},
    )
    for begin in range(0, n, 50_000):
        x = rng.random((min(50_000, n - begin), FEATURES), dtype=np.float32)
        y = x[:, :CLASSES].argmax(axis=1).astype(np.uint8)
        for row, label in zip(x, y, strict=True):
            producer.produce(topic, row.tobytes(), bytes([int(label)]), partition=0)
    producer.flush()
    [r] = producer.ranges(topic)
    return r.start, r.end


def _run(python: Path, script: str, args: list[str]) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(script)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        done = subprocess.run(
            [str(python), f.name, *args], capture_output=True, text=True, env=env, cwd=ROOT
        )
    finally:
        os.unlink(f.name)
    if done.returncode != 0:
        raise RuntimeError(f"{python.name} {script[:0]}failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(settings, records: int, epochs: int) -> Result:
    result = Result(
        "train_fit",
        f"Training end to end: {records:,} records x {FEATURES} float32, "
        f"100-64-10 MLP, batch {BATCH}, {epochs} epochs",
    )
    topic = f"bench-train-{records}-{os.getpid()}"
    with Timer() as t:
        start, end = publish(settings.kafka_bootstrap, topic, records)
    console.print(f"published {records:,} records in {t.seconds:.1f}s")
    args = [settings.kafka_bootstrap, topic, str(start), str(end), str(epochs), str(BATCH)]
    ours = _run(Path(sys.executable), OURS, [*args, json.dumps(CONFIG)])
    console.print(f"ours: {ours}")
    result.rows.append(
        {
            "path": "ours (read once, steps_per_execution "
            f"{ours['steps_per_execution']}, TF in the project venv)",
            "seconds": ours["seconds"],
            "s/epoch": ours["fit_seconds"] / epochs,
            "final accuracy": ours["accuracy"],
            "final loss": ours["loss"],
        }
    )
    python, why = side_python()
    if python is None:
        console.print(f"[bold red]SKIPPED Kafka-ML row[/]: {why}")
        result.notes.append(f"Kafka-ML row skipped: {why}")
        return result
    kml = _run(python, KAFKA_ML, args)
    console.print(f"Kafka-ML: {kml}")
    assert kml["records"] == records, f"Kafka-ML read {kml['records']} of {records} records"
    result.rows.insert(
        0,
        {
            "path": "Kafka-ML (tensorflow-io 0.37.1 KafkaDataset, TF 2.16.2, re-read per epoch)",
            "seconds": kml["seconds"],
            "s/epoch": kml["seconds"] / epochs,
            "final accuracy": kml["accuracy"],
            "final loss": kml["loss"],
        },
    )
    result.ratios = {"ours / Kafka-ML (end to end speed)": kml["seconds"] / ours["seconds"]}
    result.targets = {"ours / Kafka-ML (end to end speed)": ">= 3x"}
    result.notes.append(
        f"final training accuracy: ours {ours['accuracy']:.3f}, Kafka-ML {kml['accuracy']:.3f} "
        f"(ours shuffles each epoch with the seed; Kafka-ML reads in offset order); "
        f"ours read the range once in {ours['read_seconds']:.2f}s"
    )
    return result


def main(argv: list[str] | None = None) -> Result:
    records = int(os.environ.get("KML_BENCH_TRAIN_RECORDS", "200000"))
    epochs = int(os.environ.get("KML_BENCH_TRAIN_EPOCHS", "5"))
    load_before = os.getloadavg()[0]
    with bench_stack() as settings:
        result = run(settings, records, epochs)
    result.notes.append(
        f"machine load average (1 min) {load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end: above 2, other work shared the cores and every "
        "absolute number here is lower; the ratio compares rows of this run"
        + ("" if records == 200_000 else f" (size set by KML_BENCH_TRAIN_RECORDS: {records:,})")
    )
    result.show()
    result.save()
    return result


if __name__ == "__main__":
    main()
