"""Inference through Kafka: records/s and end-to-end latency, against a Kafka-ML-style loop.

- ours: input topic -> local KafkaSource bridge (``python -m kml.dev.bridge``, the
  deployment's KafkaSource with ``ordering: unordered``, 50 events in flight) -> the infer
  function under gunicorn (LiteRT, micro-batcher) -> output topic, at fixed offered rates
  (``--rates``, ``--seconds`` each) and as an unthrottled burst (``--burst``);
- Kafka-ML style: one consumer that polls one record, calls Keras ``model.predict`` on it,
  produces the result and commits every 16 records (same model, its ``.keras`` file), on a burst
  of ``--baseline-records``.

Latency is output CreateTime - input CreateTime (Kafka record timestamps, matched by key);
records/s is records done / (last output - first input).
"""

from __future__ import annotations

import argparse
import time
import uuid

from bench.common import Result, bench_stack, console, percentile
from bench.infer_common import (
    DigitsModel,
    Follower,
    Phase,
    batch_stats,
    cpu_seconds,
    deploy,
    digits_model,
    phase,
    publish,
    rate_producer,
    serve,
    start_bridge,
    start_kafka_ml_loop,
)
from kafkaml.kafka import ensure_topic
from kafkaml.settings import Settings

OURS = "ours: bridge (unordered) + infer (LiteRT)"
KAFKA_ML = "Kafka-ML style: poll 1, model.predict, commit/16"


def row(
    path: str,
    offered: str,
    ph: Phase,
    mean_batch: float | None,
    server_cpu_s: float,
    bridge_cpu_s: float | None,
) -> dict:
    lat = ph.latencies_ms
    per = 1000 / max(ph.done, 1)
    return {
        "path": path,
        "offered/s": offered,
        "sent": ph.sent,
        "done": ph.done,
        "records/s": ph.records_per_s,
        "p50 ms": percentile(lat, 50),
        "p95 ms": percentile(lat, 95),
        "p99 ms": percentile(lat, 99),
        "mean batch": mean_batch if mean_batch is not None else "-",
        "server CPU ms/rec": server_cpu_s * per,
        "bridge CPU ms/rec": bridge_cpu_s * per if bridge_cpu_s is not None else "-",
    }


def baseline(settings: Settings, model: DigitsModel, count: int) -> dict:
    unique = uuid.uuid4().hex[:8]
    in_topic, out_topic = f"bench-kml-in-{unique}", f"bench-kml-out-{unique}"
    for topic in (in_topic, out_topic):
        ensure_topic(settings.kafka_bootstrap, topic, 3)
    producer, inputs = rate_producer(settings.kafka_bootstrap)
    follower = Follower(settings.kafka_bootstrap, out_topic)
    child = start_kafka_ml_loop(
        settings.kafka_bootstrap, model, in_topic, out_topic, count, timeout_s=120
    )
    try:
        cpu = cpu_seconds(child.pid)
        publish(producer, inputs, in_topic, model, "base-", count)
        follower.wait_for("base-", count, timeout_s=300)
        cpu = cpu_seconds(child.pid) - cpu
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
        follower.close()
    return row(KAFKA_ML, "burst", phase(inputs, follower.stamps, "base-"), 1.0, cpu, None)


def ours(
    settings: Settings,
    model: DigitsModel,
    rates: list[int],
    seconds: float,
    burst: int,
    result: Result,
) -> dict | None:
    dep = deploy(settings, model, tflite=True)
    served = serve(dep)
    bridge = None
    follower = Follower(settings.kafka_bootstrap, dep.spec["output_topic"])
    producer, inputs = rate_producer(settings.kafka_bootstrap)
    topic = dep.spec["input_topic"]
    try:
        bridge = start_bridge(dep, served, ordering="unordered")
        publish(producer, inputs, topic, model, "warm-", 200)
        follower.wait_for("warm-", 200, 60)
        burst_row = None
        for offered, count, rate in [(str(r), int(r * seconds), r) for r in rates] + [
            ("burst", burst, None)
        ]:
            prefix = f"r{offered}-"
            calls, rows = batch_stats(served.url)
            cpu = cpu_seconds(served.proc.pid()), cpu_seconds(bridge.pid())
            took = publish(producer, inputs, topic, model, prefix, count, rate)
            done = follower.wait_for(prefix, count, timeout_s=max(30.0, 3 * took))
            server_cpu = cpu_seconds(served.proc.pid()) - cpu[0]
            bridge_cpu = cpu_seconds(bridge.pid()) - cpu[1]
            ph = phase(inputs, follower.stamps, prefix)
            calls2, rows2 = batch_stats(served.url)
            mean = (rows2 - rows) / (calls2 - calls) if calls2 > calls else None
            result.rows.append(row(OURS, offered, ph, mean, server_cpu, bridge_cpu))
            console.print(result.rows[-1])
            if rate is None:
                burst_row = result.rows[-1]
            if done < count:
                result.notes.append(
                    f"offered {offered}/s: only {done} of {count} records came "
                    "out in time; later phases skipped"
                )
                break
        return burst_row
    finally:
        follower.close()
        if bridge is not None:
            bridge.stop()
        served.stop()


def run(settings: Settings, args: argparse.Namespace) -> Result:
    started = time.monotonic()
    model = digits_model(settings)
    result = Result("infer_kafka", "Inference through Kafka: digits MLP, RAW float32 8x8")
    base = baseline(settings, model, args.baseline_records)
    console.print(base)
    mine = ours(settings, model, args.rates, args.seconds, args.burst, result)
    result.rows.append(base)
    if mine and base["records/s"] and mine["records/s"]:
        result.ratios["Kafka path records/s: ours / Kafka-ML style"] = (
            mine["records/s"] / base["records/s"]
        )
        result.targets["Kafka path records/s: ours / Kafka-ML style"] = ">= 20x"
        ours_cpu = mine["server CPU ms/rec"] + mine["bridge CPU ms/rec"]
        result.ratios["CPU per record: Kafka-ML style / ours (infer + bridge)"] = (
            base["server CPU ms/rec"] / ours_cpu
        )
        result.notes.append(
            f"where the time goes (burst): the Kafka-ML-style loop spends "
            f"{base['server CPU ms/rec']:.0f} ms of CPU per record, nearly all in Keras "
            "model.predict (a tf.data pipeline and a graph call per record); ours spends "
            f"{mine['server CPU ms/rec']:.1f} ms in the infer function (HTTP parsing, the "
            "CloudEvent, one acknowledged produce per record) and "
            f"{mine['bridge CPU ms/rec']:.1f} ms in the Python bridge (one requests POST per "
            "record; Knative's dispatcher is Java and not on this budget). The model itself is "
            f"a small share (mean batch {mine['mean batch']:.1f} rows); bench.infer_events "
            "measures the function alone, driven as the dispatcher drives it."
        )
    result.notes.append(
        "ours uses the deployment's KafkaSource as rendered, ordering: unordered (the bridge "
        "keeps up to 50 events in flight per partition). Latency = output minus input Kafka "
        "CreateTime, so it includes the bridge's poll, the HTTP delivery, the prediction and "
        "the acknowledged produce."
    )
    console.print(f"infer_kafka took {time.monotonic() - started:.0f}s")
    return result


def main(argv: list[str] | None = None) -> Result:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=int, nargs="*", default=[25, 50, 100, 200])
    parser.add_argument("--seconds", type=float, default=4.0, help="per offered rate")
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--baseline-records", type=int, default=100)
    args = parser.parse_args(argv)
    with bench_stack() as settings:
        result = run(settings, args)
    result.show()
    result.save()
    return result


if __name__ == "__main__":
    main()
