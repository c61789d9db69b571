"""An inference deployment as a local gunicorn process, wired into the local stack's bridge.

``start_local_inference`` makes sure the deployment's input, output and dead-letter topics exist
(through Kafka's admin API, as a cluster's KafkaTopics would), starts (or finds) the process
under ``<state_dir>/infer-<id>/``, waits until its model is loaded, then tells the local
KafkaSource bridge about it: the deployment's KafkaSource goes to
``<state_dir>/sources/infer-<id>.yaml`` and the service's URL to
``<state_dir>/services/<service>.json`` as ``{"url": ...}``. When the bridge runs, it returns
only once the bridge's consumer of that source has every partition of the input topic assigned.
The source's consumer group starts at the topic's beginning when it is new, so records sent
before the deployment are predicted too. A stream-mode deployment runs its batched consumer
loop (``python -m functions.infer.stream``) instead, which reads Kafka itself: no bridge; its
URL serves the probes and ``/metrics``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from kafkaml.manifests import (
    INFER_WORKER,
    PROBE_THREADS,
    TOPIC_PARTITIONS,
    inference_topics,
    service_name,
)
from kafkaml.settings import Settings
from kml.dev import procs, s3_users
from kml.dev.procs import Proc, StackError, port_is_free

THREADS = Settings().infer_request_slots + PROBE_THREADS
"""Request threads per process: one per prediction slot (the bridge keeps up to 99 records in
flight) and ``PROBE_THREADS`` more that the health probes always find free."""
BRIDGE_FRESH_S = 10.0
"""A bridge status file older than this belongs to a bridge that is not running."""


def gunicorn_argv(
    port: int, threads: int = THREADS, workers: int = 1, worker_class: str = INFER_WORKER
) -> list[str]:
    """The command serving the infer function (one inference deployment per process): its
    event-loop worker unless ``worker_class`` says otherwise (``gthread``: the old server)."""
    return procs.gunicorn_argv(
        "infer", port, threads=threads, workers=workers, worker_class=worker_class
    )


def threads_for(settings: Settings) -> int:
    """The threads of a process with these settings' prediction slots."""
    return settings.infer_request_slots + PROBE_THREADS


def ensure_topics(
    settings: Settings, spec: dict[str, Any], timeout_s: float | None = None
) -> list[str]:
    """Create the deployment's input and output topics and the dead-letter topic unless they
    exist; returns them. Kafka unreachable is a 503 naming it."""
    from kafkaml.kafka import ensure_topic

    timeout = settings.kafka_timeout_s if timeout_s is None else timeout_s
    topics = [*inference_topics(spec), settings.dlq_topic]
    for topic in dict.fromkeys(topics):
        ensure_topic(settings.kafka, topic, TOPIC_PARTITIONS, timeout_s=timeout)
    return topics


def stream_argv() -> list[str]:
    """The command of a stream-mode deployment's consumer loop, its probes on loopback."""
    return [sys.executable, "-m", "functions.infer.stream", "--host", "127.0.0.1"]


def is_stream(settings: Settings, inference_id: str) -> bool:
    """Whether the stored spec asks for stream mode."""
    from kafkaml.manifests import EVENT, STREAM
    from storage.registry import Registry

    spec = Registry.from_settings(settings).get_inference(inference_id)
    return spec.get("mode", EVENT) == STREAM


def infer_env(settings: Settings, inference_id: str) -> dict[str, str]:
    """The child's environment: these settings with the deployment's id and infer's S3 key."""
    return s3_users.function_settings(settings, "infer").replace(inference_id=inference_id).to_env()


def home_of(settings: Settings, inference_id: str) -> Path:
    return Path(settings.state_dir) / f"infer-{inference_id}"


def start_local_inference(
    settings: Settings, inference_id: str, timeout_s: float = 300.0
) -> tuple[str, int]:
    """Serve ``inference_id`` locally (or find it running); returns its URL and PID."""
    from storage.registry import Registry

    spec = Registry.from_settings(settings).get_inference(inference_id)
    ensure_topics(settings, spec)
    home = home_of(settings, inference_id)
    proc = Proc("infer", home)
    url_file = home / "url"
    stream = is_stream(settings, inference_id)
    if proc.pid() is not None and url_file.is_file():
        url = url_file.read_text().strip()  # already running (maybe still loading): reuse it
    else:
        proc.stop()
        port = _free_port_from(settings.infer_port)
        url = f"http://127.0.0.1:{port}"
        env = infer_env(settings.replace(infer_stream_port=port), inference_id)
        proc.start(
            stream_argv() if stream else gunicorn_argv(port, threads_for(settings)),
            env=env,
            cwd=Path(__file__).resolve().parents[2],
        )
        url_file.write_text(url)
    try:
        proc.wait_until(
            lambda: procs.readiness_status(url, 1.0) == 200,
            f"inference {inference_id} to be ready",
            timeout_s,
        )
    except StackError:
        proc.stop()  # never leave a process behind that did not come up
        raise
    pid = proc.pid()
    if not stream:
        register_with_bridge(settings, inference_id, url)
        if bridge_running(settings):
            wait_for_source(settings, spec, timeout_s)
    assert pid is not None
    return url, pid


def bridge_running(settings: Settings) -> bool:
    """Whether a local KafkaSource bridge is running on this state dir (its status is fresh)."""
    from kml.dev.bridge.runner import read_status

    status = read_status(settings.state_dir)
    if status is None or time.time() - float(status.get("ts", 0)) > BRIDGE_FRESH_S:
        return False
    try:
        os.kill(int(status.get("pid", 0)), 0)
    except (OSError, ValueError):
        return False
    return True


def wait_for_source(settings: Settings, spec: dict[str, Any], timeout_s: float = 60.0) -> list[str]:
    """Until the bridge's consumer of the deployment's KafkaSource has every partition of the
    input topic assigned; returns them (``topic/partition``)."""
    from kafkaml.kafka import end_offsets
    from kml.dev.bridge.runner import read_status

    topic, name = spec["input_topic"], service_name(spec["id"])
    wanted = {f"{topic}/{p}" for p in end_offsets(settings.kafka, topic)}
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    while time.monotonic() < deadline:
        for source in (read_status(settings.state_dir) or {}).get("sources", []):
            if source.get("name") == name:
                seen = list(source.get("assigned") or [])
        if wanted and wanted <= set(seen):
            return sorted(wanted)
        time.sleep(0.1)
    raise StackError(
        f"the local bridge did not assign {topic} to the KafkaSource {name} within "
        f"{timeout_s:g}s (assigned: {', '.join(seen) or 'nothing'}); see the bridge's log in "
        f"{Path(settings.state_dir) / 'bridge'}"
    )


def stop_local_inference(settings: Settings, inference_id: str) -> bool:
    """Stop the process and unwire it from the bridge; True when something was running."""
    home = home_of(settings, inference_id)
    stopped = Proc("infer", home).stop()
    state = Path(settings.state_dir)
    (state / "sources" / f"infer-{inference_id}.yaml").unlink(missing_ok=True)
    service = _read(home / "service")
    if service:
        (state / "services" / f"{service}.json").unlink(missing_ok=True)
    return stopped


def register_with_bridge(settings: Settings, inference_id: str, url: str) -> Path:
    """Write the deployment's KafkaSource and its service URL where the bridge reads them."""
    from kafkaml.manifests import render_inference_manifests, to_yaml
    from storage.registry import Registry

    spec = Registry.from_settings(settings).get_inference(inference_id)
    docs = render_inference_manifests(spec, settings)
    sources = [d for d in docs if d.get("kind") == "KafkaSource"]
    services = [d for d in docs if d.get("kind") == "Service"]
    if not sources:
        raise StackError(f"the manifests of inference {inference_id} have no KafkaSource")
    name = services[0]["metadata"]["name"] if services else f"kml-infer-{inference_id}"
    state = Path(settings.state_dir)
    (state / "sources").mkdir(parents=True, exist_ok=True)
    (state / "services").mkdir(parents=True, exist_ok=True)
    (state / "services" / f"{name}.json").write_text(json.dumps({"url": url}))
    (home_of(settings, inference_id) / "service").write_text(name)
    source_file = state / "sources" / f"infer-{inference_id}.yaml"
    source_file.write_text(to_yaml(sources))
    return source_file


def _free_port_from(first: int, tries: int = 200) -> int:
    for port in range(first, first + tries):
        if port_is_free(port):
            return port
    raise StackError(
        f"no free port in {first}..{first + tries - 1} for a local inference "
        "service; move the range with KML_INFER_PORT"
    )


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None
