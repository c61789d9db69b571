"""HTTP inference: latency and throughput at concurrency 1, 8 and 32, one instance per request.

Two paths into the infer function (LiteRT, under gunicorn): KServe V1
``POST /v1/models/<id>:predict`` and the ``kml.inference.request`` CloudEvent (binary mode,
``POST /``). Each concurrency level is a thread pool of ``requests.Session`` clients sending a
fixed count of requests each. The baseline is concurrency 1 on the same path in the same run:
the ratio is throughput at 32 / throughput at 1. The micro-batcher's mean batch size (rows per
model call) comes from the function's ``/metrics``.
"""

from __future__ import annotations

import argparse
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from bench.common import Result, bench_stack, console, percentile
from bench.infer_common import batch_stats, cpu_seconds, deploy, digits_model, serve
from kafkaml.events import INFERENCE_REQUEST, INFERENCE_RESPONSE
from kafkaml.settings import Settings

CONCURRENCY = (1, 8, 32)


class Client:
    """One path's request: ``call(session, instance)`` returns when the answer is checked."""

    def __init__(self, url: str, inference_id: str, path: str, token: str = "") -> None:
        self.path = path
        self.auth = {"Authorization": f"Bearer {token}"}  # scope predict
        if path == "kserve":
            self.target = f"{url}/v1/models/{inference_id}:predict"
        else:
            self.target = f"{url}/"

    def call(self, session: requests.Session, instance: list) -> None:
        if self.path == "kserve":
            r = session.post(
                self.target, json={"instances": [instance]}, headers=self.auth, timeout=60
            )
        else:
            headers = {
                "ce-specversion": "1.0",
                "ce-id": uuid.uuid4().hex,
                "ce-source": "/bench/infer_http",
                "ce-type": INFERENCE_REQUEST,
                "content-type": "application/json",
                **self.auth,
            }
            r = session.post(
                self.target, json={"instances": [instance]}, headers=headers, timeout=60
            )
            if r.headers.get("ce-type") != INFERENCE_RESPONSE:
                raise RuntimeError(f"no {INFERENCE_RESPONSE} in the answer: {r.status_code}")
        if r.status_code != 200 or len(r.json()["predictions"]) != 1:
            raise RuntimeError(f"prediction failed: {r.status_code} {r.text[:200]}")


def level(
    client: Client, instances: list[list], concurrency: int, per_client: int
) -> tuple[list[float], float]:
    """Latencies (ms) of every request and the wall time of the whole level."""

    def one_client(c: int) -> list[float]:
        session, out = requests.Session(), []
        for i in range(per_client):
            started = time.perf_counter()
            client.call(session, instances[(c * per_client + i) % len(instances)])
            out.append((time.perf_counter() - started) * 1000)
        return out

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        per = list(pool.map(one_client, range(concurrency)))
    return [ms for client_ms in per for ms in client_ms], time.perf_counter() - started


def run(settings: Settings, total: int) -> Result:
    model = digits_model(settings)
    dep = deploy(settings, model, tflite=True)
    served = serve(dep)
    instances = [x.tolist() for x in model.inputs[:512]]
    result = Result("infer_http", "HTTP inference: digits MLP (LiteRT), one instance per request")
    try:
        for path, name in (
            ("kserve", "KServe V1 :predict"),
            ("event", "CloudEvent kml.inference.request"),
        ):
            client = Client(served.url, dep.id, path, dep.settings.auth_token)
            level(client, instances, 4, 25)  # warm: connections, interpreters, code paths
            rates: dict[int, float] = {}
            for concurrency in CONCURRENCY:
                per_client = max(10, total // concurrency)
                calls, rows = batch_stats(served.url)
                cpu = cpu_seconds(served.proc.pid())
                ms, wall = level(client, instances, concurrency, per_client)
                cpu = cpu_seconds(served.proc.pid()) - cpu
                calls2, rows2 = batch_stats(served.url)
                rates[concurrency] = len(ms) / wall
                result.rows.append(
                    {
                        "path": name,
                        "concurrency": concurrency,
                        "requests": len(ms),
                        "requests/s": rates[concurrency],
                        "p50 ms": percentile(ms, 50),
                        "p99 ms": percentile(ms, 99),
                        "mean batch": (rows2 - rows) / max(calls2 - calls, 1),
                        "server CPU ms/req": cpu * 1000 / len(ms),
                    }
                )
                console.print(result.rows[-1])
            result.ratios[f"{name} requests/s: concurrency 32 / 1"] = rates[32] / rates[1]
    finally:
        served.stop()
    result.notes.append(
        "one infer worker process (the function's own command: the event-loop worker) serves "
        "every level; the clients are requests sessions on threads of the driver process, on "
        "the same cores, and at these rates they, not the server, set the pace (compare the "
        "server's CPU per request with the wall time per request); bench.infer_events drives "
        "the same server with a lean dispatcher-like load generator."
    )
    return result


def main(argv: list[str] | None = None) -> Result:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests",
        type=int,
        default=480,
        help="requests per level (split evenly between the clients)",
    )
    args = parser.parse_args(argv)
    with bench_stack() as settings:
        result = run(settings, args.requests)
    result.show()
    result.save()
    return result


if __name__ == "__main__":
    main()
