"""``make demo``: the whole Kafka-ML pipeline on the local stack, on scikit-learn's digits.

Stack up; register a model; create a deployment; publish the data and a Kafka-ML control message
to Kafka; follow training; deploy inference locally; publish held-back images to the input topic;
read the predictions back; print accuracies, artifact locations and the cluster commands.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from kafkaml.events import TRAINING_COMPLETED, TRAINING_FAILED
from kafkaml.kafka import ConfirmingProducer, end_offsets, ensure_topic, follow
from kafkaml.settings import Settings
from kafkaml.sink import RawSink
from kml.client import RegisterClient
from kml.dev.bridge import read_status
from kml.dev.stack import Stack

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the demo's own output, not TensorFlow's
console = Console(soft_wrap=True)
HELD_BACK = 100
EPOCHS = 15


def step(text: str) -> None:
    console.print(f"[bold cyan]==>[/] {text}")


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits as uint8 images (0..16) and uint8 labels, shuffled."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(7).permutation(len(data.target))
    return data.images[order].astype(np.uint8), data.target[order].astype(np.uint8)


def model_definition(name: str) -> dict[str, Any]:
    """A small Keras model, built here on the client; only its JSON config is sent."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((8, 8)),
            keras.layers.Flatten(),
            keras.layers.Rescaling(1 / 16),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    return {
        "name": name,
        "description": "MLP for 8x8 digits",
        "keras_json": model.to_json(),
        "compile": {
            "optimizer": "adam",
            "loss": "sparse_categorical_crossentropy",
            "metrics": ["accuracy"],
        },
    }


def follow_training(settings: Settings, run_id: str, start: dict[int, int]) -> dict[str, Any]:
    """Progress bar from ``kml.training.progress`` events until completed or failed."""
    with Progress(
        TextColumn("    training {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} epochs {task.fields[metrics]}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task(run_id, total=EPOCHS, metrics="")
        for msg in follow(settings.kafka, settings.results_topic, start, idle_timeout_s=600):
            event = json.loads(msg.value())
            data = event.get("data") or {}
            if data.get("run_id") != run_id:
                continue
            if event["type"] == TRAINING_FAILED:
                raise SystemExit(f"training failed: {data.get('reason')}")
            if event["type"] == TRAINING_COMPLETED:
                bar.update(task, completed=EPOCHS)
                return data
            metrics = data.get("metrics", {})
            shown = " ".join(f"{k}={v:.3f}" for k, v in metrics.items() if isinstance(v, float))
            bar.update(
                task,
                completed=data.get("epoch", 0),  # epochs count from 1
                total=data.get("epochs", EPOCHS),
                metrics=shown,
            )
    raise SystemExit("no training result on the results topic within 10 minutes")


def wait_for_source(settings: Settings, name_part: str, timeout_s: float = 60) -> None:
    """Until the bridge has joined the inference source's consumer group."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for source in (read_status(settings.state_dir) or {}).get("sources", []):
            if name_part in source["name"] and source["assigned"]:
                return
        time.sleep(0.5)
    raise SystemExit(f"the bridge did not pick up the KafkaSource of {name_part} in {timeout_s}s")


def online_predictions(
    settings: Settings, input_topic: str, output_topic: str, images: np.ndarray
) -> dict[str, int]:
    """Publish images as RAW records keyed img-<i>; collect the predicted class per key."""
    start = end_offsets(settings.kafka, output_topic)
    producer = ConfirmingProducer(settings.kafka)
    for i, image in enumerate(images):
        producer.produce(input_topic, image.tobytes(), f"img-{i}".encode())
    producer.flush()
    predicted: dict[str, int] = {}
    for msg in follow(settings.kafka, output_topic, start, idle_timeout_s=60):
        predicted[msg.key().decode()] = int(np.argmax(json.loads(msg.value())["values"]))
        if len(predicted) == len(images):
            break
    return predicted


def main() -> int:
    from kml.dev.access import admin_token_file, provision

    settings = provision(Settings.from_env())  # the local tokens: every call below carries one
    tag = uuid.uuid4().hex[:6]
    step("bringing the local stack up: Kafka, MinIO, register, train, KafkaSource bridge")
    started = time.monotonic()
    Stack(settings).up(on_started=lambda p: console.print(f"    {p.name:<10} {p.address}"))
    step(f"stack ready in {time.monotonic() - started:.1f}s")

    client = RegisterClient.from_settings(settings)
    model = client.register_model(model_definition(f"digits-mlp-{tag}"))
    step(
        f"registered model {model['name']} v{model['version']} ({model['param_count']} parameters)"
    )
    deployment = client.create_deployment(models=[model["name"]], epochs=EPOCHS, seed=42)
    step(f"created training deployment {deployment['id']}")

    images, labels = digits()
    train_x, train_y = images[:-HELD_BACK], labels[:-HELD_BACK]
    held_x, held_y = images[-HELD_BACK:], labels[-HELD_BACK:]
    topic = f"digits-{tag}"
    ensure_topic(settings.kafka, topic, partitions=3)
    ensure_topic(settings.kafka, settings.results_topic, partitions=1)
    results_start = end_offsets(settings.kafka, settings.results_topic)
    sink = RawSink(
        settings.kafka,
        topic,
        deployment["id"],
        data_type="uint8",
        label_type="uint8",
        data_reshape="8 8",
        label_reshape="1",
        validation_rate=0.1,
        test_rate=0.2,
        control_topic=settings.control_topic,
        description="sklearn digits",
    )
    sink.send_batch(train_x, train_y)
    control = sink.close()
    step(
        f"published {len(train_x)} records to {topic} (3 partitions) and the control message "
        f"to {settings.control_topic}: {control.topic}"
    )

    run_id = control.run_id()
    completed = follow_training(settings, run_id, results_start)
    model_result = next(iter(completed["models"].values()))
    test_accuracy = model_result["metrics"]["test"]["accuracy"]
    step(f"run {run_id} succeeded: test accuracy {test_accuracy:.3f}")

    from kml.dev.inference import start_local_inference

    input_topic, output_topic = f"digits-in-{tag}", f"digits-out-{tag}"
    for t in (input_topic, output_topic):
        ensure_topic(settings.kafka, t, partitions=3)
    inference = client.create_inference(
        run_id=run_id, input_topic=input_topic, output_topic=output_topic, max_scale=3
    )
    url, pid = start_local_inference(settings, inference["id"])
    wait_for_source(settings, inference["id"])
    step(
        f"inference {inference['id']} serving at {url} (pid {pid}), {input_topic} -> {output_topic}"
    )

    predicted = online_predictions(settings, input_topic, output_topic, held_x)
    correct = sum(predicted.get(f"img-{i}") == int(y) for i, y in enumerate(held_y))
    online_accuracy = correct / HELD_BACK
    step(
        f"{len(predicted)} predictions read from {output_topic}: online accuracy "
        f"{online_accuracy:.3f} on {HELD_BACK} held-back images "
        f"(test accuracy {test_accuracy:.3f})"
    )

    from storage.objects import ObjectStore

    store = ObjectStore.from_settings(settings)
    step(f"artifacts in MinIO, s3://{settings.bucket}/runs/{run_id}/:")
    for filename, key in sorted(model_result["artifacts"].items()):
        line = f"    {filename:<22} s3://{settings.bucket}/{key}"
        if filename.endswith(".png"):
            line += f"\n      {store.presigned_get(key)}"
        console.print(line, highlight=False)
    print_cluster_commands(inference["id"])
    console.print("\nThe stack keeps running: `kml dev status` shows it, `kml dev down` stops it.")
    dashboard = f"http://127.0.0.1:{settings.dashboard_port}"
    step(
        f"dashboard: {dashboard}  (this run: {dashboard}/runs/{run_id}, its predictions: "
        f"{dashboard}/inference/{inference['id']}); sign in with the token in "
        f"{admin_token_file(settings.state_dir)}"
    )
    return 0


def print_cluster_commands(inference_id: str) -> None:
    step("the same on a Knative cluster:")
    console.print(
        "    kubectl apply -k knative/overlays/strimzi-kafka   # or knative/base with your Kafka\n"
        "    kubectl apply -k knative/overlays/in-cluster-minio\n"
        "    kn service list -n kml && kn source kafka list -n kml\n"
        f"    kml deploy inference {inference_id} --apply       # its Service + KafkaSource\n"
        f"    kn service describe kml-infer-{inference_id} -n kml",
        highlight=False,
    )


if __name__ == "__main__":
    sys.exit(main())
