"""Stream-mode inference: records/s against the batched consume + produce floor and event mode.

All in one run, on one broker, the digits MLP (LiteRT), RAW float32 8x8 records:

- floor: one process polling up to ``--batch`` records, producing each record's value and key
  to an output topic at once, confirming (flush) and committing every 100 ms, without a model
  (``floor``), and the same with the three coordinate headers every stream output carries
  (``floor+headers``); a first floor run, not counted, warms the broker's JVM;
- stream mode: ``python -m functions.infer.stream`` processes in one consumer group (1, 2, 4:
  ``--replicas``), each as a Deployment's pod runs it;
- event mode: the local KafkaSource bridge (unordered) + the infer function under gunicorn;
- one stream process at half its measured rate and at 1,000 records/s for ``--seconds``:
  end-to-end latency.

Throughput (a backlog drained by a group that holds its partitions): the consumers are started
and hold their partitions, then paused (SIGSTOP: the group stays as it is for the few seconds
of publishing, under its session timeout), ``--records`` records are published, and the
consumers are resumed (SIGCONT); records/s = records / (last output CreateTime - resume). So the
publisher neither competes for the cores nor limits the rate, and no rebalance falls inside the
measurement. Duplicates = outputs - inputs.

Latency: records are published at a steady rate, each stamped with its send time as its
CreateTime (no delivery report per record); after the phase both topics are read back, and
latency = output CreateTime - input CreateTime, matched by key. Nothing but the publisher's
paced loop runs in the benchmark's process meanwhile.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from bench.common import Result, bench_stack, console, percentile
from bench.infer_common import (
    ROOT,
    DigitsModel,
    Follower,
    cpu_seconds,
    deploy,
    digits_model,
    phase,
    publish,
    rate_producer,
    serve,
    start_bridge,
)
from functions.infer.stream import FETCH_BYTES
from kafkaml.kafka import end_offsets, ensure_topic
from kafkaml.settings import Settings
from kml.dev.inference import infer_env, stream_argv
from kml.dev.procs import Proc, free_port, readiness_status
from storage.registry import Registry

WHERE_THE_TIME_GOES = (
    "The drains' records/s are close to the floor's when the consumer is not what bounds "
    "them: here the broker's work per record (beside it) and the shared cores are, so the "
    "consumer's CPU per record is the steadier comparison. A profile of one stream process "
    "draining a backlog (pyinstrument; its main thread spent "
    "~3.7 us of CPU per record): producing each output with its 4 headers about a quarter, the "
    "per-record loop that builds those headers and keys a fifth, consume a sixth, writing the "
    "outputs as JSON a tenth (one orjson call per batch, ~1 us per record; json.dumps of Python "
    "floats took ~6 us), decoding and the LiteRT call (buckets of 1024 rows) about 5%; the rest "
    "of the consumer's CPU is librdkafka's threads. The broker's CPU per record is beside it: "
    "on this machine the broker, not the consumer, is the larger cost."
)
FLOOR, FLOOR_HEADERS, STREAM, EVENT = (
    "floor: batched consume + produce, no model",
    "floor + the 3 coordinate headers",
    "stream mode",
    "event mode: bridge + infer",
)


@dataclass
class Burst:
    records: int
    publish_s: float
    span_s: float
    outputs: int
    cpu_s: float
    broker_cpu_s: float

    def row(self, path: str, replicas: int | str) -> dict:
        return {
            "path": path,
            "replicas": replicas,
            "records": self.records,
            "publish s": self.publish_s,
            "records/s": self.records / self.span_s if self.span_s > 0 else 0.0,
            "records/s per replica": (
                self.records / self.span_s / replicas
                if isinstance(replicas, int) and self.span_s > 0
                else "-"
            ),
            "duplicates": self.outputs - self.records,
            "consumer CPU us/rec": 1e6 * self.cpu_s / max(self.records, 1),
            "broker CPU us/rec": 1e6 * self.broker_cpu_s / max(self.records, 1),
        }


def drain(settings: Settings, model: DigitsModel, in_topic: str, out_topic: str, n: int, pgids):
    """Pause the consumers, publish ``n`` records, resume them; time until the ``n``-th output."""
    bootstrap = settings.kafka_bootstrap
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 2_000_000,
        }
    )
    payloads = [model.payload(i) for i in range(len(model.inputs))]
    keys = [f"r-{i}".encode() for i in range(n)]
    _signal(pgids, signal.SIGSTOP)
    try:
        started = time.time()
        for i in range(n):
            producer.produce(in_topic, payloads[i % len(payloads)], keys[i])
        producer.flush(120)
        publish_s = time.time() - started
        cpu = sum(cpu_seconds(p) for p in pgids)
        broker = cpu_seconds(broker_pid(settings))
        resumed_ms = time.time() * 1000
    finally:
        _signal(pgids, signal.SIGCONT)
    wait_for_records(bootstrap, out_topic, n, 600)
    cpu = sum(cpu_seconds(p) for p in pgids) - cpu
    broker = cpu_seconds(broker_pid(settings)) - broker
    time.sleep(1.0)  # let repeats (if any) land before counting
    ends = end_offsets(bootstrap, out_topic)
    last_ms = _last_timestamp(bootstrap, out_topic, ends)
    return Burst(n, publish_s, (last_ms - resumed_ms) / 1000, sum(ends.values()), cpu, broker)


def wait_for_records(bootstrap: str, topic: str, n: int, timeout_s: float) -> None:
    """Until ``topic`` holds ``n`` records in all, asking one client every 50 ms (a client
    per look would add connections for the broker to serve while it is measured)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"ends-{uuid.uuid4()}"})
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ends = [
                consumer.get_watermark_offsets(TopicPartition(topic, p), 10, cached=False)[1]
                for p in partitions
            ]
            if sum(ends) >= n:
                return
            time.sleep(0.05)
    finally:
        consumer.close()


def broker_pid(settings: Settings) -> int | None:
    """The local stack's Kafka broker (its process group)."""
    return Proc("kafka", Path(settings.state_dir) / "kafka").pid()


def _signal(pgids, sig: int) -> None:
    for pgid in pgids:
        os.killpg(pgid, sig)


def _last_timestamp(bootstrap: str, topic: str, ends: dict[int, int]) -> float:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"last-{uuid.uuid4()}"})
    wanted = {p for p, end in ends.items() if end > 0}
    consumer.assign([TopicPartition(topic, p, ends[p] - 1) for p in wanted])
    last, deadline = 0.0, time.monotonic() + 30
    try:
        while wanted and time.monotonic() < deadline:
            for m in consumer.consume(100, timeout=0.5):
                if m.error() is None and m.offset() == ends[m.partition()] - 1:
                    last = max(last, m.timestamp()[1])
                    wanted.discard(m.partition())
    finally:
        consumer.close()
    return last


# -- the floor (child process) ------------------------------------------------------------------
def floor_loop(bootstrap: str, in_topic: str, out_topic: str, batch: int, headers: bool) -> None:
    """(child) Consume + produce at least once, as fast as Python does it, without decoding,
    model or JSON: produce each polled record at once, and confirm (flush) and commit what was
    produced every 100 ms or when idle; stream mode waits for each batch (while it predicts
    the next), so this loop waits less than it does."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"floor-{in_topic}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "max.partition.fetch.bytes": FETCH_BYTES,  # as stream mode fetches
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 400_000,
            "delivery.report.only.error": True,
        }
    )
    assigned = []
    consumer.subscribe([in_topic], on_assign=lambda c, ps: assigned.append(ps))
    while not assigned:
        consumer.poll(0.1)
    print("ready", flush=True)
    topic_header = ("kml-input-topic", in_topic.encode())
    produced: dict[int, int] = {}  # next offset per partition, produced and not yet confirmed
    confirmed_at = time.monotonic()
    while True:
        msgs = consumer.consume(batch, 0) or consumer.consume(1, 0.02)
        for m in msgs:
            if m.error() is not None:
                continue
            if headers:
                hs = [
                    topic_header,
                    ("kml-input-partition", b"%d" % m.partition()),
                    ("kml-input-offset", b"%d" % m.offset()),
                ]
                producer.produce(out_topic, m.value(), m.key(), headers=hs)
            else:
                producer.produce(out_topic, m.value(), m.key())
            produced[m.partition()] = m.offset() + 1
        if produced and (not msgs or time.monotonic() - confirmed_at >= 0.1):
            producer.flush(30)
            offsets = [TopicPartition(in_topic, p, o) for p, o in produced.items()]
            consumer.commit(offsets=offsets, asynchronous=True)
            produced, confirmed_at = {}, time.monotonic()


def floor(settings: Settings, model: DigitsModel, args, headers: bool) -> dict:
    unique = uuid.uuid4().hex[:8]
    in_topic, out_topic = f"bench-floor-in-{unique}", f"bench-floor-out-{unique}"
    for topic in (in_topic, out_topic):
        ensure_topic(settings.kafka_bootstrap, topic, args.partitions)
    proc = Proc("floor", Path(settings.state_dir) / f"floor-{unique}")
    child = proc.start(
        [sys.executable, "-m", "bench.infer_stream", "floor", settings.kafka_bootstrap]
        + [in_topic, out_topic, str(args.batch), "1" if headers else "0"],
        cwd=ROOT,
    )
    try:
        proc.wait_until(lambda: "ready" in proc.log_file.read_text(), "the floor loop", 60)
        got = drain(settings, model, in_topic, out_topic, args.records, [child.pid])
    finally:
        proc.stop()
    return got.row(FLOOR_HEADERS if headers else FLOOR, 1)


# -- stream mode --------------------------------------------------------------------------------
def stream_deployment(settings: Settings, model: DigitsModel, partitions: int):
    dep = deploy(settings, model, tflite=True, partitions=partitions)
    registry = Registry.from_settings(settings)
    fields = {k: v for k, v in dep.spec.items() if k not in ("id", "created", "schema_version")}
    spec = registry.create_inference({**fields, "id": f"{dep.id}-s", "mode": "stream"})
    return dep.settings.replace(inference_id=spec["id"]), spec


def start_streams(
    settings: Settings, spec: dict, replicas: int, batch: int, partitions: int
) -> list[Proc]:
    """``replicas`` stream processes, returned once all hold their share of the partitions."""
    procs, urls = [], []
    home = Path(settings.state_dir) / f"stream-{spec['id']}"
    for i in range(replicas):
        port = free_port()
        proc = Proc(f"stream-{i}", home)
        env = infer_env(
            settings.replace(infer_stream_port=port, infer_stream_batch=batch, log_level="WARNING"),
            spec["id"],
        )
        proc.start(stream_argv(), env=env, cwd=ROOT)
        procs.append(proc)
        urls.append(f"http://127.0.0.1:{port}")
    for proc, url in zip(procs, urls, strict=True):
        proc.wait_until(lambda u=url: readiness_status(u, 1.0) == 200, "stream ready", 300)

    def balanced() -> bool:
        held = [_assigned(u) for u in urls]
        return sum(held) == partitions and all(h > 0 for h in held)

    procs[0].wait_until(balanced, "the group to share the partitions", 120)
    return procs


def _assigned(url: str) -> int:
    try:
        text = urllib.request.urlopen(f"{url}/metrics", timeout=2).read().decode()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("kml_infer_stream_assigned_partitions "):
            return int(float(line.split()[1]))
    return 0


def stream(settings: Settings, model: DigitsModel, args, replicas: int) -> dict:
    dep_settings, spec = stream_deployment(settings, model, args.partitions)
    procs = start_streams(dep_settings, spec, replicas, args.batch, args.partitions)
    try:
        got = drain(
            settings,
            model,
            spec["input_topic"],
            spec["output_topic"],
            args.records,
            [p.pid() for p in procs],
        )
    finally:
        for p in procs:
            p.stop()
    return got.row(STREAM, replicas)


def stream_latency(settings: Settings, model: DigitsModel, args, rates: list[float]) -> list[dict]:
    """End-to-end latency of one stream process at each offered rate, ``--seconds`` each."""
    dep_settings, spec = stream_deployment(settings, model, args.partitions)
    (proc,) = start_streams(dep_settings, spec, 1, args.batch, args.partitions)
    bootstrap, in_topic, out_topic = (
        settings.kafka_bootstrap,
        spec["input_topic"],
        spec["output_topic"],
    )
    # librdkafka's own linger (5 ms): with 1 ms the publisher's queue grew by a second's
    # records at 45,000/s here, and the latency measured was the publisher's.
    producer = Producer({"bootstrap.servers": bootstrap, "acks": 1, "batch.num.messages": 10_000})
    out = []
    try:
        for rate in rates:
            count = int(rate * args.seconds)
            in_start, out_start = (
                end_offsets(bootstrap, in_topic),
                end_offsets(bootstrap, out_topic),
            )
            pids = {"broker": broker_pid(settings), "stream": proc.pid()}
            cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
            cpu |= {"publisher": time.process_time(), "machine": busy()}
            took = paced(producer, in_topic, model, count, rate)
            cores = {name: (cpu_seconds(pid) - cpu[name]) / took for name, pid in pids.items()}
            cores["publisher"] = (time.process_time() - cpu["publisher"]) / took
            cores["machine"] = (busy() - cpu["machine"]) / took
            wait_for_records(bootstrap, out_topic, _total(out_start) + count, max(60.0, 3 * took))
            sent = stamps(bootstrap, in_topic, in_start)
            got = stamps(bootstrap, out_topic, out_start)
            latencies = [float(got[k] - t) for k, t in sent.items() if k in got]
            out.append(
                {
                    "offered/s": round(rate),
                    "achieved/s": count / took,
                    "done": len(latencies),
                    "p50 ms": percentile(latencies, 50),
                    "p99 ms": percentile(latencies, 99),
                    "max ms": max(latencies, default=float("nan")),
                    "cores": cores,
                }
            )
            console.print(out[-1])
    finally:
        proc.stop()
    return out


def paced(producer: Producer, topic: str, model: DigitsModel, count: int, rate: float) -> float:
    """Publish ``count`` records at ``rate`` per second, each stamped with its send time (its
    CreateTime), in steps of a millisecond; returns the seconds it took."""
    started, sent = time.time(), 0
    while sent < count:
        now = time.time()
        due, now_ms = min(count, int((now - started) * rate) + 1), int(now * 1000)
        while sent < due:
            try:
                producer.produce(topic, model.payload(sent), b"%d" % sent, timestamp=now_ms)
            except BufferError:
                producer.poll(0.001)
                continue
            sent += 1
        producer.poll(0)
        time.sleep(0.001)
    took = time.time() - started
    producer.flush(60)
    return took


def stamps(bootstrap: str, topic: str, start: dict[int, int]) -> dict[bytes, int]:
    """CreateTime by key of the records of ``topic`` from ``start`` to its end now."""
    ends = end_offsets(bootstrap, topic)
    left = {p for p, end in ends.items() if end > start.get(p, 0)}
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"stamps-{uuid.uuid4()}"})
    consumer.assign([TopicPartition(topic, p, start.get(p, 0)) for p in left])
    found: dict[bytes, int] = {}
    deadline = time.monotonic() + 60
    try:
        while left and time.monotonic() < deadline:
            for m in consumer.consume(10_000, timeout=0.5):
                if m.error() is None:
                    found[m.key()] = m.timestamp()[1]
                    if m.offset() >= ends[m.partition()] - 1:
                        left.discard(m.partition())
    finally:
        consumer.close()
    return found


def busy() -> float:
    """CPU seconds the whole machine has spent busy (``/proc/stat``: all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _total(offsets: dict[int, int]) -> int:
    return sum(offsets.values())


# -- event mode ---------------------------------------------------------------------------------
def event_mode(settings: Settings, model: DigitsModel, count: int) -> dict:
    dep = deploy(settings, model, tflite=True)
    served = serve(dep)
    bridge = None
    follower = Follower(settings.kafka_bootstrap, dep.spec["output_topic"])
    producer, inputs = rate_producer(settings.kafka_bootstrap)
    try:
        bridge = start_bridge(dep, served, ordering="unordered")
        cpu = cpu_seconds(served.proc.pid()) + cpu_seconds(bridge.pid())
        publish(producer, inputs, dep.spec["input_topic"], model, "ev-", count)
        follower.wait_for("ev-", count, timeout_s=600)
        cpu = cpu_seconds(served.proc.pid()) + cpu_seconds(bridge.pid()) - cpu
        ph = phase(inputs, follower.stamps, "ev-")
    finally:
        follower.close()
        if bridge is not None:
            bridge.stop()
        served.stop()
    return {
        "path": EVENT,
        "replicas": 1,
        "records": count,
        "publish s": "-",
        "records/s": ph.records_per_s,
        "records/s per replica": ph.records_per_s,
        "duplicates": ph.done - count,
        "consumer CPU us/rec": 1e6 * cpu / max(count, 1),
        "broker CPU us/rec": "-",
    }


# -- the run ------------------------------------------------------------------------------------
def run(settings: Settings, args: argparse.Namespace) -> Result:
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    model = digits_model(settings)
    result = Result("infer_stream", "Stream-mode inference: digits MLP, RAW float32 8x8")
    skip = set(args.skip)
    floor(settings, model, args, headers=True)  # not counted: warms the broker's JVM (its JIT)
    base = floor(settings, model, args, headers=False)
    console.print(base)
    rows = [base]
    if "headers" not in skip:
        rows.append(floor(settings, model, args, headers=True))
        console.print(rows[-1])
    by_replicas = {}
    for replicas in args.replicas:
        by_replicas[replicas] = stream(settings, model, args, replicas)
        console.print(by_replicas[replicas])
    rows += by_replicas.values()
    event = None
    if "event" not in skip:
        event = event_mode(settings, model, args.event_records)
        console.print(event)
        rows.append(event)
    result.rows += rows
    one = by_replicas.get(1)
    if one and one["records/s"]:
        rates = [one["records/s"] / 2, 1000] if "latency" not in skip else []
        for i, lat in enumerate(stream_latency(settings, model, args, rates)):
            what = "half the 1-replica rate" if i == 0 else "a light load"
            result.notes.append(
                f"latency of one stream process at {what} ({lat['offered/s']:,} records/s "
                f"offered, {lat['achieved/s']:,.0f}/s sent, {lat['done']:,} done): p50 "
                f"{lat['p50 ms']:.0f} ms, p99 {lat['p99 ms']:.0f} ms, max {lat['max ms']:.0f} ms "
                "(output minus input CreateTime; target p99 <= 50 ms at half rate). Cores busy "
                "meanwhile: "
                + ", ".join(f"{name} {used:.2f}" for name, used in lat["cores"].items())
                + f" of {os.cpu_count()}."
            )
        result.ratios["stream (1 replica) / floor, records/s"] = (
            one["records/s"] / base["records/s"]
        )
        result.targets["stream (1 replica) / floor, records/s"] = ">= 0.5x"
        headed = next((r for r in rows if r["path"] == FLOOR_HEADERS), None)
        if headed and headed["records/s"]:
            # The outputs' coordinate headers are part of the format (event mode writes them
            # too): the floor that writes them as well shows what the rest of the loop costs.
            result.ratios["stream (1 replica) / floor with the same headers, records/s"] = (
                one["records/s"] / headed["records/s"]
            )
        result.ratios["consumer CPU per record: floor / stream (1 replica)"] = (
            base["consumer CPU us/rec"] / one["consumer CPU us/rec"]
        )
        if event:
            result.ratios["stream (1 replica) / event mode, records/s"] = (
                one["records/s"] / event["records/s"]
            )
        result.ratios["stream (1 replica) / 100,000 records/s target"] = one["records/s"] / 100_000
        result.targets["stream (1 replica) / 100,000 records/s target"] = ">= 1x"
        for replicas, row in by_replicas.items():
            if replicas != 1:
                result.ratios[f"stream {replicas} replicas / 1 replica, records/s"] = (
                    row["records/s"] / one["records/s"]
                )
        floors = (FLOOR, FLOOR_HEADERS)
        cpu = {r["path"]: r["consumer CPU us/rec"] for r in rows if r["path"] in floors}
        cpu[STREAM] = one["consumer CPU us/rec"]
        result.notes.append(
            "where the time goes (consumer CPU per record, librdkafka's threads included): "
            + ", ".join(f"{path} {us:.1f} us" for path, us in cpu.items())
            + ". "
            + WHERE_THE_TIME_GOES
        )
    result.notes.append(
        f"{args.records:,} records per backlog over {args.partitions} partitions, polls of "
        f"{args.batch:,}; the consumers hold their partitions and are paused while the backlog "
        "is published, then resumed; a first floor run, not counted, warms the broker's JVM "
        "(cold, it spent twice the CPU per record). Replicas are processes on this machine: "
        f"the broker shares its {os.cpu_count()} cores with them, so more replicas than cores "
        "cannot add throughput here. Duplicates = outputs - inputs (0 without failures)."
    )
    load_after, cores = os.getloadavg()[0], os.cpu_count() or 1
    said = (
        f"machine load average (1 min) {load_before:.1f} at the start, {load_after:.1f} at the end"
    )
    if max(load_before, load_after) > cores:
        said += (
            f": above {cores}, other work shared the cores and every absolute number here is "
            "lower; the ratios compare rows of this run"
        )
    result.notes.append(said + ".")
    console.print(f"infer_stream took {time.monotonic() - started:.0f}s")
    return result


def main(argv: list[str] | None = None) -> Result | None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["floor"]:
        bootstrap, in_topic, out_topic, batch, headers = argv[1:6]
        floor_loop(bootstrap, in_topic, out_topic, int(batch), headers == "1")
        return None
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch", type=int, default=10_000, help="records per poll")
    parser.add_argument("--replicas", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--event-records", type=int, default=3_000)
    parser.add_argument("--seconds", type=float, default=5.0, help="of the latency phase")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["headers", "event", "latency"],
        help="leave out parts (while iterating)",
    )
    args = parser.parse_args(argv)
    with bench_stack() as settings:
        result = run(settings, args)
    result.show()
    result.save()
    return result


if __name__ == "__main__":
    main()
