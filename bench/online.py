"""Online training: what a window costs against retraining from scratch as the stream grows, and
how soon an inference that follows the stream serves a newly promoted version.

One stream on a fresh local stack (Kafka + MinIO), scikit-learn's bundled digits (uint8 8x8),
the demo's MLP (8x8 -> 64 -> 10), batch 32, ``KML_BENCH_ONLINE_EPOCHS`` epochs (default 5),
windows of ``KML_BENCH_ONLINE_WINDOW`` records (default 400), 20 % held out.

- window cost: the records of one window are published, then one stream step (what a tick does
  for each stream: end offsets, the window's read, test-then-train scores, fit warm-started from
  the promoted model, artifacts, the run record, the conditional commit of the cursor and the
  promotion decision) until the window is durable. The baseline, after every window: an
  ordinary run of the same deployment (same model, same epochs, same held-out fraction) on
  every record the stream has seen so far, from the registered weights, which is how a stream is
  followed without online training (a control message per retrain).
- promotion to first prediction: an infer process (gunicorn, LiteRT) created with
  ``--stream`` follows the stream, its default pointer check every ``infer_follow_s`` (5 s),
  while two clients keep calling ``:predict``. Windows whose label mapping flips (so each
  candidate beats the promoted model) promote; the time is from the window's commit (the stream
  record's ``trained_at``, just before the pointer write) to the first answer whose
  ``model_version`` is the new version.

Training runs in this process (TensorFlow), inference in its own (LiteRT); both share 2 cores
with whatever else runs on the machine.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import requests

from bench.common import Result, bench_stack, console, percentile
from bench.infer_common import Deployment, spawn, wait_ready
from functions.register.handlers import create_inference
from functions.train.online import OnlineTrainer
from functions.train.service import Trainer
from kafkaml.kafka import ConfirmingProducer, ensure_topic
from kafkaml.settings import Settings
from kafkaml.wire import ControlMessage, OffsetRange, parse_control_message
from kml.demo import digits, model_definition
from kml.demo_online import DRIFT, control_message
from storage.registry import Registry

WINDOWS = 8
PROMOTIONS = 4
CLIENTS = 2
INPUT_CONFIG = control_message("")["input_config"]  # the windows' own, for the retrain


@dataclass
class Bench:
    settings: Settings
    window: int
    epochs: int
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])

    def __post_init__(self) -> None:
        self.registry = Registry.from_settings(self.settings)
        self.registry.ensure_ready()
        self.trainer = Trainer.from_settings(self.settings)
        self.online = OnlineTrainer(self.trainer)
        self.topic = f"bench-online-{self.tag}"
        ensure_topic(self.settings.kafka_bootstrap, self.topic, partitions=1)
        self.producer = ConfirmingProducer(self.settings.kafka, self.settings.kafka_timeout_s)
        self.x, self.y = digits()
        self.sent = 0

    def start(self) -> str:
        definition = model_definition(f"bench-online-{self.tag}")
        name = definition.pop("name")
        self.registry.register_model(name, definition)
        self.deployment = self.registry.create_deployment(
            {"models": [name], "epochs": self.epochs, "batch_size": 32, "seed": 7,
             "learning_rate": 0.01}
        )["id"]  # fmt: skip
        body = json.dumps(control_message(self.topic, self.window, validation_rate=0.2)).encode()
        msg = parse_control_message(body, None, deployment_id=self.deployment)
        self.sid = self.online.start(msg)["id"]
        return self.sid

    def publish(self, mapping: np.ndarray | None = None) -> None:
        """One window's records (digits cycling), labels through ``mapping`` when given."""
        index = np.arange(self.sent, self.sent + self.window) % len(self.y)
        labels = self.y[index] if mapping is None else mapping[self.y[index]]
        for image, label in zip(self.x[index], labels, strict=True):
            self.producer.produce(self.topic, image.tobytes(), label.tobytes())
        self.producer.flush()
        self.sent += self.window

    def step(self) -> dict:
        """One stream step, as a tick runs it; the committed window."""
        done = self.online.advance(self.sid)
        assert done.get("window") is not None, done
        return done["window"]

    def scratch(self) -> dict:
        """An ordinary run on everything the stream has seen, from the registered weights."""
        stream, _ = self.registry.get_stream(self.sid)
        start, end = int(stream["start"]["0"]), int(stream["cursor"]["0"])
        return self.trainer.train(self._message(OffsetRange(self.topic, 0, start, end)), http=False)

    def _message(self, offsets: OffsetRange) -> ControlMessage:
        return ControlMessage(
            deployment_id=self.deployment,
            topic=str(offsets),
            input_format="RAW",
            input_config=INPUT_CONFIG,
            validation_rate=0.2,
            test_rate=0.0,
            total_msg=offsets.count,
        )

    def warm_up(self) -> None:
        """One ordinary run on a topic of its own: TensorFlow's first fit (graph tracing) is
        paid before any timed step, as a train process that has already trained pays it."""
        topic = f"{self.topic}-warm"
        ensure_topic(self.settings.kafka_bootstrap, topic, partitions=1)
        for image, label in zip(self.x[:100], self.y[:100], strict=True):
            self.producer.produce(topic, image.tobytes(), label.tobytes())
        self.producer.flush()
        self.trainer.train(self._message(OffsetRange(topic, 0, 0, 100)), http=False)


def metrics_of(run: dict) -> dict:
    [model] = run["models"].values()
    return model["metrics"]


def accuracy_of(run: dict) -> float | None:
    metrics = metrics_of(run)
    scores = metrics.get("test") or metrics.get("evaluated_on_validation") or {}
    return scores.get("accuracy")


class Cost:
    """Wall and CPU seconds of a block (CPU: every thread of this process, where TensorFlow
    trains, so it holds when other work shares the cores)."""

    def __enter__(self) -> Cost:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def window_costs(bench: Bench) -> Result:
    result = Result(
        "online_window",
        f"Online window vs retraining from scratch: digits MLP, windows of {bench.window} "
        f"records, {bench.epochs} epochs",
    )
    for k in range(WINDOWS):
        bench.publish()
        with Cost() as online:
            window = bench.step()
        with Cost() as scratch:
            run = bench.scratch()
        result.rows.append(
            {
                "window": k,
                "records seen": (k + 1) * bench.window,
                "window s": online.wall,
                "scratch s": scratch.wall,
                "window CPU s": online.cpu,
                "scratch CPU s": scratch.cpu,
                "window accuracy": window["candidate"],
                "scratch accuracy": accuracy_of(run),
                "promoted": "yes" if window["promote"] else "",
            }
        )
        console.print(result.rows[-1])
    last = result.rows[-1]
    at = f"at window {WINDOWS - 1} ({last['records seen']:,} records seen)"
    result.ratios[f"retrain from scratch / online window, wall time, {at}"] = (
        last["scratch s"] / last["window s"]
    )
    result.ratios[f"retrain from scratch / online window, CPU time, {at}"] = (
        last["scratch CPU s"] / last["window CPU s"]
    )
    result.notes.append(window_note(result.rows))
    return result


def window_note(rows: list[dict]) -> str:
    """What the window rows show, from their own numbers."""
    first, last = rows[0], rows[-1]
    growth = last["records seen"] / first["records seen"]
    return (
        f"over {growth:.0f}x the records seen, the retrain's CPU time went from "
        f"{first['scratch CPU s']:.1f}s to {last['scratch CPU s']:.1f}s and a window's from "
        f"{first['window CPU s']:.1f}s to {last['window CPU s']:.1f}s: at this size both are "
        "mostly fixed cost (the model built and traced, TFLite conversion, artifacts and "
        "records in MinIO), and a window also builds and scores the promoted and the frozen "
        "model and draws stream.png, so it costs about what a retrain does; only the "
        "retrain's fit grows with the records seen (records x epochs). Wall times move with "
        "the machine's load. Accuracies: each run's held-out 20 % (the window's own records "
        "for online, a split of all records seen for the retrain), scored after training"
    )


class Load:
    """Clients calling ``:predict`` until stopped; every answer's time, status and version."""

    def __init__(self, url: str, inference_id: str, token: str, images: np.ndarray) -> None:
        self.target = f"{url}/v1/models/{inference_id}:predict"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.images = [i.tolist() for i in images]
        self.answers: list[tuple[float, int, str | None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(c,)) for c in range(CLIENTS)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _run(self, c: int) -> None:
        session, i = requests.Session(), c
        while not self._stop.is_set():
            body = {"instances": [self.images[i % len(self.images)]]}
            try:
                r = session.post(self.target, json=body, headers=self.headers, timeout=30)
                status, version = r.status_code, r.json().get("model_version")
            except (requests.RequestException, ValueError):
                status, version = 0, None
            self.answers.append((time.time(), status, version))
            i += CLIENTS

    def first(self, version: str, after: float, timeout_s: float = 60) -> float | None:
        """When the first answer by ``version`` at or after ``after`` arrived."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for at, status, v in list(self.answers):
                if at >= after and status == 200 and v == version:
                    return at
            time.sleep(0.02)
        return None


def follow_latency(bench: Bench) -> Result:
    settings = bench.settings
    spec = create_inference(
        bench.registry,
        settings,
        {"stream": bench.sid, "input_topic": f"{bench.topic}-in",
         "output_topic": f"{bench.topic}-out", "id": f"bench-follow-{bench.tag}"},
    )  # fmt: skip
    served_settings = settings.replace(
        inference_id=spec["id"],
        dlq_topic=f"{bench.topic}-dlq",
        model_cache_dir=os.path.join(settings.state_dir, f"cache-{bench.tag}"),
    )
    for topic in (spec["input_topic"], spec["output_topic"], served_settings.dlq_topic):
        ensure_topic(settings.kafka_bootstrap, topic, 1)
    served = spawn(Deployment(served_settings, spec))
    follow_s = served_settings.infer_follow_s
    result = Result(
        "online_follow",
        f"Promotion to the first prediction by the new version: an inference following the "
        f"stream under {CLIENTS} clients' steady :predict load, pointer check every {follow_s:g}s",
    )
    try:
        wait_ready(served)
        mappings = [DRIFT, np.arange(10, dtype=np.uint8)]
        with Load(served.url, spec["id"], settings.auth_token, bench.x[:256]) as load:
            tries = 0
            while len(result.rows) < PROMOTIONS and tries < 2 * PROMOTIONS:
                bench.publish(mappings[tries % 2])  # the labels flip: the candidate wins
                tries += 1
                window = bench.step()
                if not window["promote"]:
                    continue
                stream, _ = bench.registry.get_stream(bench.sid)
                version = stream["promoted"]["model"]
                first = load.first(version, window["trained_at"])
                seconds = None if first is None else first - window["trained_at"]
                result.rows.append(
                    {
                        "window": window["index"],
                        "version": version.rsplit("@", 1)[1],
                        "promotion to first prediction s": seconds,
                    }
                )
                console.print(result.rows[-1])
            time.sleep(1)
        answers = load.answers
    finally:
        served.stop()
    seen = [r["promotion to first prediction s"] for r in result.rows]
    times = [s for s in seen if s is not None]
    failed = sum(1 for _, status, _ in answers if status != 200)
    versions = len({v for _, s, v in answers if s == 200})
    if times:
        result.ratios[f"median promotion to first prediction / check interval ({follow_s:g}s)"] = (
            percentile(times, 50) / follow_s
        )
    result.notes.append(
        f"{len(times)} of {len(seen)} promotions seen; median {percentile(times, 50):.2f}s, "
        f"max {max(times, default=float('nan')):.2f}s; {len(answers):,} requests during the "
        f"windows, {failed} failed, answered by {versions} versions; the bound is the check "
        f"interval plus the version's download and load"
    )
    return result


def main(argv: list[str] | None = None) -> list[Result]:
    window = int(os.environ.get("KML_BENCH_ONLINE_WINDOW", "400"))
    epochs = int(os.environ.get("KML_BENCH_ONLINE_EPOCHS", "5"))
    load_before = os.getloadavg()[0]
    with bench_stack() as settings:
        bench = Bench(settings, window, epochs)
        try:
            bench.start()
            bench.warm_up()
            results = [window_costs(bench), follow_latency(bench)]
        finally:
            bench.trainer.close()
    note = (
        f"machine load average (1 min) {load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end (2 cores)"
    )
    for result in results:
        result.notes.append(note)
        result.show()
        result.save()
    return results


if __name__ == "__main__":
    main()
