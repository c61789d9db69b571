"""The event path alone: the infer function driven like Knative's dispatcher, before and after.

A load generator in this process posts binary-mode ``dev.knative.kafka.event`` CloudEvents the
way the KafkaSource dispatcher does in ``ordering: unordered`` (the attributes of
``tests/functions/infer/kafkasource_driver.py``, the deliver token, keep-alive connections, up
to ``--in-flight`` requests per partition), straight to one infer worker process: no bridge, no
Kafka consumer in the way. The function predicts and produces to the real Kafka, answering
only once Kafka acknowledged (2xx-only-after-ack), so a request's latency is the record's.

Both servers run in the same run on the same deployment:

- before: gunicorn ``gthread`` (one thread per slot) and the Flask app, the old command line;
- after: ``functions.infer.worker.EventLoopWorker`` (the lean event path).

Per server: records/s at burst (``--burst`` requests, in flight as above), server CPU per record
(user + system of the gunicorn process group from /proc) and the share of it on the worker's
main thread (the event loop's), the load generator's own CPU per record, the model's mean
batch, then p50/p99 at half the burst rate (open loop, latency from each request's scheduled
time) and at 2,000/s (half the 4,000 records/s target, the rate the p99 target is set at), and
the same for KServe's ``:predict`` (one instance per request). A reference row paces the
function's own producer alone at the same rates: the latency of Kafka's acknowledgement on this
machine, which every Kafka record's answer waits for.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import Result, bench_stack, console, percentile
from bench.infer_common import (
    DigitsModel,
    Served,
    batch_stats,
    cpu_seconds,
    deploy,
    digits_model,
    wait_ready,
)
from functions.infer.producer import DeliveringProducer
from kml.dev.inference import home_of, infer_env
from kml.dev.procs import Proc, free_port

ROOT_DIR = Path(__file__).resolve().parents[1]
TARGET_HALF = 2000.0
"""Half the 4,000 records/s target: the rate the p99 target is set at."""
TARGET_COLUMNS = ("p50 ms @2,000/s", "p99 ms @2,000/s")
SERVERS = {
    "before: gthread + Flask": "gthread",
    "after: event-loop worker": "functions.infer.worker.EventLoopWorker",
}


@dataclass
class Drive:
    done: int
    seconds: float
    latencies_ms: list[float]
    statuses: Counter

    @property
    def per_s(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0


def kafka_request(host: str, token: str, topic: str, partition: int, offset: int, body: bytes):
    """One request as Knative's dispatcher sends a record that is not a CloudEvent."""
    key = base64.b64encode(f"k-{partition}-{offset}".encode()).decode()
    head = (
        f"POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
        "ce-specversion: 1.0\r\n"
        f"ce-id: partition:{partition}/offset:{offset}\r\n"
        f"ce-source: /apis/v1/namespaces/default/kafkasources/kml-infer-bench#{topic}\r\n"
        "ce-type: dev.knative.kafka.event\r\n"
        f"ce-subject: partition:{partition}#{offset}\r\n"
        "ce-time: 2026-12-02T12:00:00.000Z\r\n"
        f"ce-knativekafkapartition: {partition}\r\nce-knativekafkaoffset: {offset}\r\n"
        f"ce-key: {key}\r\nce-partitionkey: {key}\r\n"
        "Prefer: reply\r\nKn-Namespace: default\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    )
    return head.encode() + body


def predict_request(host: str, token: str, name: str, body: bytes):
    return (
        f"POST /v1/models/{name}:predict HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode() + body


async def drive(
    port: int, requests: list[bytes], connections: int, rate: float | None = None
) -> Drive:
    """Send ``requests`` over ``connections`` keep-alive connections (one request in flight
    each); at ``rate``/s when given (latency from each request's scheduled time)."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    nxt = 0
    start = time.perf_counter() + 0.05

    async def one_connection() -> None:
        nonlocal nxt
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while nxt < len(requests):
                i = nxt
                nxt += 1
                due = start + i / rate if rate else time.perf_counter()
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(requests[i])
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                statuses[int(head[9:12])] += 1
                latencies.append((time.perf_counter() - due) * 1000)
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(one_connection() for _ in range(connections)))
    return Drive(len(latencies), time.perf_counter() - began, latencies, statuses)


def loop_thread_seconds(pgid: int | None) -> float:
    """CPU time (user + system) of the main thread of each worker in the group ``pgid``: the
    event loop's (the rest of the group is librdkafka's threads, the poll thread, the master)."""
    if pgid is None:
        return 0.0
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == pgid:
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            fields = (entry / "task" / entry.name / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def broker_seconds(state_dir: str) -> float:
    """CPU time (user + system) of the Kafka broker of the stack in ``state_dir``: it shares
    the cores with the server and the load generator."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    home = str(Path(state_dir) / "kafka")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if home not in (entry / "cmdline").read_bytes().decode(errors="replace"):
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def produce_alone(producer, topic: str, value: bytes, rate: float, count: int) -> Drive:
    """Acknowledged produces of prediction-sized records with their headers, paced at ``rate``
    as the paced requests are, through the function's own producer: what Kafka's
    acknowledgement alone costs in latency on this machine, without HTTP or the model."""
    latencies: list[float] = []
    start = time.perf_counter() + 0.05
    headers = [
        ("kml-input-topic", b"bench-in"),
        ("kml-input-partition", b"0"),
        ("kml-input-offset", b"1000000"),
        ("kml-model-version", b"bench-run"),
    ]

    def acked(due: float) -> Callable[[asyncio.Future], None]:
        return lambda _: latencies.append((time.perf_counter() - due) * 1000)

    began, sent = time.perf_counter(), []
    for i in range(count):
        due = start + i / rate
        if due > time.perf_counter():
            await asyncio.sleep(due - time.perf_counter())
        future = producer.send_async(topic, value, f"k-{i % 2}-{i}".encode(), headers)
        future.add_done_callback(acked(due))
        sent.append(future)
    await asyncio.gather(*sent)
    return Drive(count, time.perf_counter() - began, latencies, Counter({200: count}))


class StallProbe:
    """How late a 1 ms sleep in a thread of this process wakes while the probe runs: when the
    machine's cores are taken (other work, the broker, the server), every process waits for a
    CPU like this, and each wait of tens of ms lands on the p99 of a 5 s window."""

    def __init__(self) -> None:
        self.late_ms: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StallProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.perf_counter()
            time.sleep(0.001)
            self.late_ms.append((time.perf_counter() - began - 0.001) * 1000)

    def summary(self) -> str:
        if not self.late_ms:
            return "-"
        return f"p99 {percentile(self.late_ms, 99):.1f} / max {max(self.late_ms):.0f} ms"


STALLS: dict[str, str] = {}
"""The stall probe's summary during each window at 2,000/s, by row (for the note)."""


def target_latency(paced: Drive | None) -> dict:
    """p50/p99 at half the 4,000 records/s target ("-" for a server slower than that: its
    half rate is below it, and its own row says it)."""
    if paced is None:
        return dict.fromkeys(TARGET_COLUMNS, "-")
    return dict(zip(TARGET_COLUMNS, _p50_p99(paced), strict=True))


def _p50_p99(paced: Drive) -> tuple[float, float]:
    return percentile(paced.latencies_ms, 50), percentile(paced.latencies_ms, 99)


def _statuses(paced: Drive | None) -> Counter:
    return paced.statuses if paced is not None else Counter()


def kafka_alone(dep, rate: float, seconds: float = 5.0) -> dict:
    """The reference row: Kafka's acknowledgement alone at the paced rate."""
    producer = DeliveringProducer.from_settings(dep.settings)
    value = b'{"values":[' + b",".join([b"0.012345678901234567"] * 10) + b"]}"
    topic = dep.spec["output_topic"]

    def paced_at(at: float) -> Drive:
        return asyncio.run(produce_alone(producer, topic, value, at, int(at * seconds)))

    try:
        paced_at(500)  # connected, warm
        paced = paced_at(rate)
        with StallProbe() as probe:
            at_target = paced_at(TARGET_HALF) if rate > TARGET_HALF else None
        STALLS["alone"] = probe.summary()
    finally:
        producer.close()
    return {
        "server": "reference: the acknowledged produce alone",
        "path": "kafka (no HTTP, no model)",
        "half rate/s": rate,
        "p50 ms @half": percentile(paced.latencies_ms, 50),
        "p99 ms @half": percentile(paced.latencies_ms, 99),
        **target_latency(at_target),
        "non-2xx": 0,
    }


def spawn_server(dep, worker_class: str, threads: int) -> Served:
    from kml.dev.inference import gunicorn_argv

    port = free_port()
    proc = Proc(f"infer-{worker_class.rsplit('.', 1)[-1]}", home_of(dep.settings, dep.id))
    spawned = time.monotonic()
    argv = gunicorn_argv(port, threads=threads, worker_class=worker_class)
    proc.start(argv, env=infer_env(dep.settings, dep.id), cwd=ROOT_DIR)
    served = Served(f"http://127.0.0.1:{port}", proc, spawned)
    wait_ready(served)
    return served


def measure(
    label: str,
    served: Served,
    make: callable,
    count: int,
    connections: int,
    path: str,
    result: Result,
    on_loop: bool,
) -> dict:
    port = int(served.url.rsplit(":", 1)[1])
    asyncio.run(drive(port, [make(i) for i in range(500)], connections))  # warm up
    calls, rows = batch_stats(served.url)
    burst_requests = [make(10_000 + i) for i in range(count)]
    pgid, state_dir = served.proc.pid(), served.proc.home.parent.as_posix()  # home_of's parent
    cpu, loop_cpu, own = cpu_seconds(pgid), loop_thread_seconds(pgid), time.process_time()
    broker_cpu = broker_seconds(state_dir)
    burst = asyncio.run(drive(port, burst_requests, connections))
    server_cpu = cpu_seconds(pgid) - cpu
    loop_cpu = loop_thread_seconds(pgid) - loop_cpu
    broker_cpu = broker_seconds(state_dir) - broker_cpu
    generator_cpu = time.process_time() - own
    calls2, rows2 = batch_stats(served.url)
    half = burst.per_s / 2

    def paced_at(rate: float, first: int) -> Drive:
        requests = [make(first + i) for i in range(int(rate * 5))]
        return asyncio.run(drive(port, requests, connections, rate=rate))

    paced = paced_at(half, 10**6)
    with StallProbe() as probe:
        at_target = paced_at(TARGET_HALF, 2 * 10**6) if half > TARGET_HALF else None
    STALLS[f"{label} {path}"] = probe.summary()
    entry = {
        "server": label,
        "path": path,
        "in flight": connections,
        "records/s (burst)": burst.per_s,
        "server CPU ms/rec": server_cpu * 1000 / max(burst.done, 1),
        "of it loop thread": loop_cpu * 1000 / max(burst.done, 1) if on_loop else "-",
        "load generator CPU ms/rec": generator_cpu * 1000 / max(burst.done, 1),
        "broker CPU ms/rec": broker_cpu * 1000 / max(burst.done, 1),
        "mean batch": (rows2 - rows) / (calls2 - calls) if calls2 > calls else "-",
        "burst p99 ms": percentile(burst.latencies_ms, 99),
        "half rate/s": half,
        "p50 ms @half": percentile(paced.latencies_ms, 50),
        "p99 ms @half": percentile(paced.latencies_ms, 99),
        **target_latency(at_target),
        "non-2xx": sum(
            n
            for s, n in (burst.statuses + paced.statuses + _statuses(at_target)).items()
            if s >= 300
        ),
    }
    result.rows.append(entry)
    console.print(entry)
    return entry


def run(settings, args: argparse.Namespace) -> Result:
    model: DigitsModel = digits_model(settings)
    result = Result("infer_events", "The event path alone: dispatcher-like load on one worker")
    loaded = os.getloadavg()[0]
    dep = deploy(settings, model, tflite=True, partitions=args.partitions)
    token = dep.settings.auth_token
    topic = dep.spec["input_topic"]
    host = "127.0.0.1"
    connections = args.partitions * args.in_flight
    threads = dep.settings.infer_request_slots + 4
    payloads = [model.payload(i) for i in range(64)]
    instances = [
        json.dumps({"instances": [np.frombuffer(p, np.float32).tolist()]}).encode()
        for p in payloads
    ]

    def kafka(i: int) -> bytes:
        return kafka_request(host, token, topic, i % args.partitions, i, payloads[i % 64])

    def kserve(i: int) -> bytes:
        return predict_request(host, token, dep.id, instances[i % 64])

    found: dict[str, dict[str, dict]] = {}
    for (label, worker_class), count in zip(
        SERVERS.items(), (args.before_burst, args.burst), strict=True
    ):
        served = spawn_server(dep, worker_class, threads)
        try:
            on_loop = worker_class != "gthread"  # gthread answers in its request threads
            found[label] = {
                path: measure(label, served, make, count, connections, path, result, on_loop)
                for path, make in (("kafka", kafka), (":predict", kserve))
            }
        finally:
            served.stop()
    before, after = found[list(SERVERS)[0]], found[list(SERVERS)[1]]
    alone = kafka_alone(dep, after["kafka"]["half rate/s"])
    result.rows.append({**dict.fromkeys(after["kafka"], "-"), **alone})
    for path in ("kafka", ":predict"):
        name = "event path" if path == "kafka" else ":predict"
        result.ratios[f"{name} records/s: after / before"] = (
            after[path]["records/s (burst)"] / before[path]["records/s (burst)"]
        )
        result.ratios[f"{name} CPU per record: before / after"] = (
            before[path]["server CPU ms/rec"] / after[path]["server CPU ms/rec"]
        )
    for path, name in (("kafka", "event path"), (":predict", ":predict")):
        row = after[path]
        for ratio, value in (
            (f"{name} records/s per worker (after) / 4,000", row["records/s (burst)"] / 4000),
            (f"0.25 ms / {name} server CPU per record (after)", 0.25 / row["server CPU ms/rec"]),
            (f"25 ms / {name} p99 at 2,000/s (after)", 25 / target_p99(row)),
        ):
            result.ratios[ratio], result.targets[ratio] = value, ">= 1x"
        result.ratios[f"25 ms / {name} p99 at half its burst rate (after)"] = (
            25 / row["p99 ms @half"]
        )
    result.notes.append(where_the_time_goes(after, alone, loaded))
    result.notes.append(
        f"one worker process each; {args.partitions} partitions x {args.in_flight} requests in "
        "flight (the dispatcher's unordered mode), keep-alive, binary mode, the deliver token; "
        "the load generator shares the machine's 2 cores with the server. Every answer is "
        "2xx only after Kafka acknowledged the prediction (acks=all, idempotent). 'before' "
        "runs today's Flask app under gthread, so it already has the cached token lookups and "
        "the sampled request log; the old code measured 2.5 ms of CPU per record (infer_kafka)."
    )
    return result


def target_p99(row: dict) -> float:
    """p99 at 2,000/s, half the target rate; at half its own rate for a server slower than
    the target (it was never offered 2,000/s)."""
    p99 = row[TARGET_COLUMNS[1]]
    return p99 if isinstance(p99, float) else row["p99 ms @half"]


def where_the_time_goes(after: dict[str, dict], alone: dict, loaded: float) -> str:
    kafka, kserve = after["kafka"], after[":predict"]
    cpu, loop = kafka["server CPU ms/rec"], kafka["of it loop thread"]
    broker, generator = kafka["broker CPU ms/rec"], kafka["load generator CPU ms/rec"]
    return (
        f"where the time goes (after): {cpu:.3f} ms of server CPU per Kafka record, "
        f"{loop:.3f} ms of it on the event loop's thread (HTTP, the CloudEvent, the model call "
        "shared by the batch, the produce call, the answer), the rest in librdkafka's threads "
        f"and the poll thread; a :predict request costs {kserve['server CPU ms/rec']:.3f} ms. "
        f"Each record also cost the broker {broker:.3f} ms and the load generator "
        f"{generator:.3f} ms on the same {os.cpu_count()} cores, and the server used "
        f"{cpu * kafka['records/s (burst)'] / 1000:.2f} of a core at burst: with a core of its "
        f"own one worker would do about {1000 / cpu:,.0f} records/s. At half rate a record "
        f"took p50 {kafka['p50 ms @half']:.1f} / p99 {kafka['p99 ms @half']:.0f} ms from its "
        "scheduled time to its 2xx; Kafka's acknowledgement alone at that rate (no HTTP, no "
        f"model) took p50 {alone['p50 ms @half']:.1f} / p99 {alone['p99 ms @half']:.0f} ms, "
        f"and a :predict request (no Kafka) p50 {kserve['p50 ms @half']:.1f} / p99 "
        f"{kserve['p99 ms @half']:.0f} ms. At 2,000/s (half the 4,000 target) a record took "
        f"p99 {_ms(kafka[TARGET_COLUMNS[1]])} and Kafka's acknowledgement alone p99 "
        f"{_ms(alone[TARGET_COLUMNS[1]])}; meanwhile a 1 ms sleep in a thread of the load "
        f"generator woke late by {STALLS.get(kafka['server'] + ' kafka', '-')} (during the "
        f"produce alone: {STALLS.get('alone', '-')}). {load_note(loaded)}"
    )


def load_note(loaded: float) -> str:
    end, cores = os.getloadavg()[0], os.cpu_count() or 1
    said = f"Machine load average (1 min) {loaded:.1f} at the start, {end:.1f} at the end"
    if max(loaded, end) <= cores:
        return said + "."
    return (
        f"{said}: above {cores}, other work shared the cores and the tails are mostly waiting "
        "for a CPU."
    )


def _ms(value: float | str) -> str:
    return f"{value:.0f} ms" if isinstance(value, float) else "- (not offered)"


def main(argv: list[str] | None = None) -> Result:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=20_000, help="requests at burst (after)")
    parser.add_argument("--before-burst", type=int, default=3_000, help="requests (before)")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=50, help="per partition")
    args = parser.parse_args(argv)
    with bench_stack() as settings:
        result = run(settings, args)
    result.show()
    result.save()
    return result


if __name__ == "__main__":
    main()
