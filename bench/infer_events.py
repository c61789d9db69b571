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
(user + system of the gunicorn process group from /proc), the load generator's own CPU per
record, the model's mean batch, then
p50/p99 at half the burst rate (open loop, latency from each request's scheduled time), and the
same for KServe's ``:predict`` (one instance per request).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import time
from collections import Counter
from dataclasses import dataclass

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
from kml.dev.inference import home_of, infer_env
from kml.dev.procs import Proc, free_port

ROOT_DIR = __import__("pathlib").Path(__file__).resolve().parents[1]
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
) -> dict:
    port = int(served.url.rsplit(":", 1)[1])
    asyncio.run(drive(port, [make(i) for i in range(500)], connections))  # warm up
    calls, rows = batch_stats(served.url)
    burst_requests = [make(10_000 + i) for i in range(count)]
    cpu, own = cpu_seconds(served.proc.pid()), time.process_time()
    burst = asyncio.run(drive(port, burst_requests, connections))
    server_cpu = cpu_seconds(served.proc.pid()) - cpu
    generator_cpu = time.process_time() - own
    calls2, rows2 = batch_stats(served.url)
    half = burst.per_s / 2
    paced = asyncio.run(
        drive(port, [make(10**6 + i) for i in range(int(half * 5))], connections, rate=half)
    )
    entry = {
        "server": label,
        "path": path,
        "in flight": connections,
        "records/s (burst)": burst.per_s,
        "server CPU ms/rec": server_cpu * 1000 / max(burst.done, 1),
        "load generator CPU ms/rec": generator_cpu * 1000 / max(burst.done, 1),
        "mean batch": (rows2 - rows) / (calls2 - calls) if calls2 > calls else "-",
        "burst p99 ms": percentile(burst.latencies_ms, 99),
        "half rate/s": half,
        "p50 ms @half": percentile(paced.latencies_ms, 50),
        "p99 ms @half": percentile(paced.latencies_ms, 99),
        "non-2xx": sum(n for s, n in (burst.statuses + paced.statuses).items() if s >= 300),
    }
    result.rows.append(entry)
    console.print(entry)
    return entry


def run(settings, args: argparse.Namespace) -> Result:
    model: DigitsModel = digits_model(settings)
    result = Result("infer_events", "The event path alone: dispatcher-like load on one worker")
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
            found[label] = {
                "kafka": measure(label, served, kafka, count, connections, "kafka", result),
                "kserve": measure(label, served, kserve, count, connections, ":predict", result),
            }
        finally:
            served.stop()
    before, after = found[list(SERVERS)[0]], found[list(SERVERS)[1]]
    for path in ("kafka", "kserve"):
        name = "event path" if path == "kafka" else ":predict"
        result.ratios[f"{name} records/s: after / before"] = (
            after[path]["records/s (burst)"] / before[path]["records/s (burst)"]
        )
        result.ratios[f"{name} CPU per record: before / after"] = (
            before[path]["server CPU ms/rec"] / after[path]["server CPU ms/rec"]
        )
    kafka = after["kafka"]
    result.ratios["event path records/s per worker (after) / 4,000"] = (
        kafka["records/s (burst)"] / 4000
    )
    result.targets["event path records/s per worker (after) / 4,000"] = ">= 1x"
    result.ratios["0.25 ms / event path server CPU per record (after)"] = (
        0.25 / kafka["server CPU ms/rec"]
    )
    result.targets["0.25 ms / event path server CPU per record (after)"] = ">= 1x"
    result.ratios["25 ms / event path p99 at half rate (after)"] = 25 / kafka["p99 ms @half"]
    result.targets["25 ms / event path p99 at half rate (after)"] = ">= 1x"
    cores = kafka["server CPU ms/rec"] * kafka["records/s (burst)"] / 1000
    result.notes.append(
        f"where the time goes (after): {kafka['server CPU ms/rec']:.2f} ms of server CPU per "
        f"Kafka record against {after['kserve']['server CPU ms/rec']:.2f} ms per :predict "
        "request on the same loop; the difference is the record's produce, its delivery report "
        "and the loop's millisecond polls (librdkafka's broker thread included). At burst the "
        f"server used {cores:.2f} of a core (load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores at the end of the run), so records/s is bound by the CPU it got: "
        f"with a core of its own it would do about {1000 / kafka['server CPU ms/rec']:,.0f}/s. "
        f"At half rate a Kafka record took p50 {kafka['p50 ms @half']:.1f} / p99 "
        f"{kafka['p99 ms @half']:.0f} ms (the acknowledged produce included) and a :predict "
        f"request, without Kafka, p50 {after['kserve']['p50 ms @half']:.1f} / p99 "
        f"{after['kserve']['p99 ms @half']:.0f} ms; with that load average much of it is "
        "waiting for a CPU."
    )
    result.notes.append(
        f"one worker process each; {args.partitions} partitions x {args.in_flight} requests in "
        "flight (the dispatcher's unordered mode), keep-alive, binary mode, the deliver token; "
        "the load generator shares the machine's 2 cores with the server. Every answer is "
        "2xx only after Kafka acknowledged the prediction (acks=all, idempotent). 'before' "
        "runs today's Flask app under gthread, so it already has the cached token lookups and "
        "the sampled request log; the old code measured 2.5 ms of CPU per record (infer_kafka)."
    )
    return result


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
