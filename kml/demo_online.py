"""``kml demo online``: a drifting stream; a frozen model falls, the online stream recovers.

On the local stack: register a small digits model, deploy it, and start an online stream with
Kafka-ML's online control message (bare topic, ``incremental: true``). Publish scikit-learn's
digits in windows; half way the label mapping is permuted (a drift no frozen model survives).
Each tick trains one window, test-then-train: train scores the promoted model and the frozen one
(the stream's first promoted model) on the window's held-out records before the candidate trains
on the rest, and promotes by Kafka-ML's improvement rule. The demo prints both accuracy curves,
the promotions and the windows the online stream needed to recover, and links ``stream.png``
(drawn by train in MinIO, the same link ``kml streams show`` prints). An inference deployment
following the stream, served locally, shows which version answers after each window: it
switches on its own.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import numpy as np
from rich.table import Table

from kafkaml import events
from kafkaml.kafka import ConfirmingProducer, ensure_topic
from kafkaml.settings import Settings
from kafkaml.wire import control_message_key
from kml.client import RegisterClient
from kml.demo import console, digits, model_definition, step

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

WINDOW = 200
"""Records per window (``window_records``); a quarter is held out for the scores."""
BEFORE, AFTER = 4, 5
"""Windows before and after the drift."""
EPOCHS = 10
RECOVERED = 0.8
"""Recovered: the online accuracy is back to this fraction of its accuracy before the drift."""
PROBE = 20
"""Images sent to the inference deployment after each window, to see which version answers."""
DRIFT = np.array([3, 7, 0, 9, 5, 1, 8, 2, 6, 4], dtype=np.uint8)
"""The label mapping after the drift: a permutation moving every digit to another label."""


def control_message(
    topic: str, window: int = WINDOW, validation_rate: float = 0.25
) -> dict[str, Any]:
    """Kafka-ML's online control message as its ``OnlineRawSink`` writes it, plus the window."""
    return {
        "topic": topic,
        "input_format": "RAW",
        "description": "digits, labels permuted half way",
        "input_config": {
            "data_type": "uint8",
            "label_type": "uint8",
            "data_reshape": "8 8",
            "label_reshape": "1",
        },
        "validation_rate": validation_rate,
        "test_rate": 0,
        "total_msg": None,
        "incremental": True,
        "indefinite": True,
        "stream_timeout": -1,
        "monitoring_metric": "val_accuracy",
        "change": "up",
        "improvement": 0.05,
        "window_records": window,
    }


def drifting_stream() -> tuple[np.ndarray, np.ndarray]:
    """``BEFORE + AFTER`` windows of digits; from window ``BEFORE`` on the labels are permuted."""
    images, labels = digits()
    index = np.arange((BEFORE + AFTER) * WINDOW) % len(labels)
    x, y = images[index], labels[index].copy()
    y[BEFORE * WINDOW :] = DRIFT[y[BEFORE * WINDOW :]]
    return x, y


def wait_for_stream(client: RegisterClient, deployment: str, timeout_s: float = 120) -> dict:
    """The stream train started from the control message (the bridge delivers it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for stream in client.get("/streams"):
            if stream.get("deployment_id") == deployment:
                return stream
        time.sleep(0.5)
    raise SystemExit(f"no stream for deployment {deployment} after {timeout_s:.0f}s")


def tick(settings: Settings) -> dict[str, Any]:
    """One ``kml.stream.tick`` to train, as the PingSource (the bridge's ticker) sends it."""
    headers, body = events.to_http(events.new_event(events.STREAM_TICK, "/kml/demo/online", {}))
    request = urllib.request.Request(
        f"http://127.0.0.1:{settings.train_port}/",
        data=body,
        headers={**headers, "Authorization": f"Bearer {settings.auth_token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=settings.request_timeout_s) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:  # 503: a transient fault failed every stream; again
        if e.code == 503:
            time.sleep(1)
            return {}
        raise SystemExit(f"train answered the tick with {e.code}: {e.read()[:300]!r}") from None


def recovery(online: list[float | None]) -> tuple[float, int | None]:
    """The online accuracy before the drift (mean) and the windows after the drift it took to be
    back at ``RECOVERED`` of it (None: not within the stream)."""
    before = [a for a in online[1:BEFORE] if a is not None]
    level = float(np.mean(before)) if before else 0.0
    for k, accuracy in enumerate(online[BEFORE:]):
        if k and accuracy is not None and accuracy >= RECOVERED * level:
            return level, k
    return level, None


def curve(values: list[float | None]) -> str:
    return " ".join("  -  " if v is None else f"{v:.3f}" for v in values)


def online() -> None:
    """A drifting digits stream: frozen vs online accuracy per window, promotions, stream.png."""
    from kml.dev.access import admin_token_file, provision
    from kml.dev.stack import Stack

    settings = provision(Settings.from_env())
    tag = uuid.uuid4().hex[:6]
    step("bringing the local stack up: Kafka, MinIO, register, train, KafkaSource bridge")
    Stack(settings).up(on_started=lambda p: console.print(f"    {p.name:<10} {p.address}"))
    client = RegisterClient.from_settings(settings)
    model = client.register_model(model_definition(f"drift-mlp-{tag}"))
    deployment = client.create_deployment(
        models=[model["name"]], epochs=EPOCHS, batch_size=16, seed=7, learning_rate=0.01
    )["id"]
    step(f"registered {model['name']} v{model['version']}, online deployment {deployment}")

    topic = f"drift-{tag}"
    ensure_topic(settings.kafka, topic, partitions=1)
    producer = ConfirmingProducer(settings.kafka, settings.kafka_timeout_s)
    producer.produce(
        settings.control_topic,
        json.dumps(control_message(topic)).encode(),
        control_message_key(deployment),
    )
    producer.flush()
    stream = wait_for_stream(client, deployment)
    sid = stream["id"]
    step(f"stream {sid} started on {topic} at {stream['cursor']} (Kafka-ML online message)")

    x, y = drifting_stream()
    for i in range(len(y)):
        producer.produce(topic, x[i].tobytes(), y[i].tobytes())
    producer.flush()
    step(
        f"published {len(y)} records: {BEFORE} windows of {WINDOW} digits, then {AFTER} windows "
        f"with the labels permuted ({' '.join(f'{d}->{m}' for d, m in enumerate(DRIFT))})"
    )

    started = time.monotonic()
    done, serving = 0, None
    while done < BEFORE + AFTER:
        tick(settings)
        windows = client.get(f"/streams/{sid}")["windows"]
        for w in windows[done:]:
            drift = " (drifted)" if w["index"] >= BEFORE else ""
            console.print(
                f"    window {w['index']}{drift}: frozen {_num(w.get('baseline'))}  online "
                f"{_num(w.get('promoted'))}  candidate {_num(w.get('candidate'))}"
                f"{'  -> promoted' if w.get('promote') else ''}",
                highlight=False,
            )
        done = len(windows)
        if done and serving is None:  # something is promoted: inference follows the stream
            serving = follow_stream(settings, client, sid, tag)
        elif serving is not None:
            versions = probe(settings, serving, x[:PROBE])
            console.print(f"      inference answered with {_versions(versions)}", highlight=False)
        if time.monotonic() - started > 900:
            raise SystemExit("the windows did not train within 15 minutes")
    elapsed = time.monotonic() - started

    stream = client.get(f"/streams/{sid}")
    windows = stream["windows"]
    frozen = [w.get("baseline") for w in windows]
    online_acc = [w.get("promoted") for w in windows]
    table = Table("window", "labels", "frozen", "online", "candidate", "promoted")
    for w in windows:
        table.add_row(
            str(w["index"]),
            "permuted" if w["index"] >= BEFORE else "true",
            _num(w.get("baseline")),
            _num(w.get("promoted")),
            _num(w.get("candidate")),
            "yes" if w.get("promote") else "",
        )
    console.print(table)
    level, windows_to_recover = recovery(online_acc)
    frozen_before = np.mean([f for f in frozen[1:BEFORE] if f is not None])
    frozen_after = np.mean([f for f in frozen[BEFORE:] if f is not None])
    step(f"{len(windows)} windows trained in {elapsed:.0f}s, {stream['promotions']} promotions")
    console.print(
        f"    accuracy per window (held-out records, scored before each window trains):\n"
        f"    frozen: {curve(frozen)}\n"
        f"    online: {curve(online_acc)}\n"
        f"    frozen model: {frozen_before:.3f} before the drift, {frozen_after:.3f} after\n"
        f"    online stream: {level:.3f} before the drift; "
        + (
            f"back to >= {RECOVERED:.0%} of it {windows_to_recover} window(s) after the drift"
            if windows_to_recover is not None
            else "not recovered within the stream"
        ),
        highlight=False,
    )
    if serving is not None:
        final = client.get(f"/streams/{sid}")["promoted"]["model"]
        waited = time.monotonic()
        versions = probe(settings, serving, x[:PROBE])
        while not all(final.endswith(f"@{v}") or v == final for v in versions):
            if time.monotonic() - waited > 120:
                break
            time.sleep(2)
            versions = probe(settings, serving, x[:PROBE])
        console.print(
            f"    inference {serving['id']} follows the stream: after the last window it answers "
            f"with {_versions(versions)} (promoted: {final}), switched on its own",
            highlight=False,
        )
    from storage.registry import Registry

    registry = Registry.from_settings(settings)
    key = registry.stream_plot_key(sid)
    if registry.store.exists(key):
        step(f"stream.png (s3://{settings.bucket}/{key}):")
        console.print(f"    {registry.store.presigned_get(key)}", highlight=False, soft_wrap=True)
    dashboard = f"http://127.0.0.1:{settings.dashboard_port}"
    step(
        f"kml streams show {sid}; dashboard {dashboard}/streams/{sid} (sign in with the token "
        f"in {admin_token_file(settings.state_dir)}); kml streams stop {sid} ends it"
    )


def follow_stream(settings: Settings, client: RegisterClient, sid: str, tag: str) -> dict[str, Any]:
    """An inference deployment that follows the stream (``kml inference create --stream``),
    served locally; it loads each promoted version by itself."""
    from kml.demo import wait_for_source
    from kml.dev.inference import start_local_inference

    input_topic, output_topic = f"drift-in-{tag}", f"drift-out-{tag}"
    for t in (input_topic, output_topic):
        ensure_topic(settings.kafka_bootstrap, t, partitions=1)
    spec = client.create_inference(stream=sid, input_topic=input_topic, output_topic=output_topic)
    url, pid = start_local_inference(settings, spec["id"])
    wait_for_source(settings, spec["id"])
    step(
        f"inference {spec['id']} follows stream {sid} at {url} (pid {pid}), "
        f"{input_topic} -> {output_topic}"
    )
    return spec


def probe(settings: Settings, spec: dict[str, Any], images: np.ndarray) -> list[str]:
    """The model version (``kml-model-version``) on each prediction of ``images``."""
    from kafkaml.kafka import end_offsets, follow

    bootstrap = settings.kafka_bootstrap
    start = end_offsets(bootstrap, spec["output_topic"])
    producer = ConfirmingProducer(bootstrap, settings.kafka_timeout_s)
    for i, image in enumerate(images):
        producer.produce(spec["input_topic"], image.tobytes(), f"probe-{i}".encode())
    producer.flush()
    versions: list[str] = []
    for msg in follow(bootstrap, spec["output_topic"], start, idle_timeout_s=60):
        headers = dict(msg.headers() or [])
        versions.append((headers.get("kml-model-version") or b"?").decode())
        if len(versions) == len(images):
            break
    return versions


def _versions(versions: list[str]) -> str:
    counts = {v: versions.count(v) for v in dict.fromkeys(versions)}
    return ", ".join(f"version {v} ({n})" for v, n in counts.items()) or "nothing"


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    online()
