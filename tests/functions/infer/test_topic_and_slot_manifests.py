"""What an inference deployment's manifests promise about topics and threads: on a Strimzi
cluster a KafkaTopic for the input and output topics comes with them (the KafkaSource never
waits for a topic nobody creates), and the Service runs more threads than prediction slots."""

from __future__ import annotations

from pathlib import Path

import pytest

from kafkaml.manifests import (
    PROBE_THREADS,
    STREAM,
    TOPIC_PARTITIONS,
    render_inference_manifests,
    topic_resource_name,
)
from kafkaml.settings import Settings
from kml.kustomize import build
from kml.manifests_check import check_documents, missing_topics

KNATIVE = Path(__file__).resolve().parents[3] / "knative"
SPEC = {
    "id": "digits1",
    "run_id": "run-abc",
    "model": "clf",
    "input_format": "RAW",
    "input_config": {"data_type": "float32", "data_reshape": "8 8"},
    "input_topic": "Digits_In",
    "output_topic": "digits-out",
    "min_scale": 0,
    "max_scale": 4,
    "target_concurrency": 12,
}
STRIMZI = Settings(namespace="kml", strimzi_cluster="kml-kafka")


def _kinds(docs: list[dict]) -> list[str]:
    return [d["kind"] for d in docs]


@pytest.mark.parametrize("mode", ["event", STREAM])
def test_on_strimzi_the_input_and_output_topics_come_as_kafka_topics(mode):
    docs = render_inference_manifests({**SPEC, "mode": mode}, STRIMZI)
    topics = {d["spec"]["topicName"]: d for d in docs if d["kind"] == "KafkaTopic"}
    assert set(topics) == {"Digits_In", "digits-out"}
    for topic in topics.values():
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "kml-kafka"
        assert topic["metadata"]["namespace"] == "kml"
        assert topic["spec"]["partitions"] == TOPIC_PARTITIONS
    # A topic that is not a Kubernetes name gets one that cannot collide with another topic's.
    assert topics["digits-out"]["metadata"]["name"] == "digits-out"
    assert topics["Digits_In"]["metadata"]["name"].startswith("digits-in-")
    assert topic_resource_name("Digits_In") != topic_resource_name("digits-in")
    assert missing_topics(docs, docs) == []  # the manifest check finds every topic declared


def test_without_strimzi_no_kafka_topic_and_the_check_names_the_topics_to_create():
    docs = render_inference_manifests(SPEC, Settings(namespace="kml"))
    assert _kinds(docs) == ["Service", "KafkaSource", "NetworkPolicy"]
    assert missing_topics(docs, []) == [
        "KafkaSource/kml-infer-digits1: topic 'Digits_In' has no KafkaTopic in the "
        "strimzi-kafka overlay"
    ]


def test_the_strimzi_overlay_makes_register_render_kafka_topics_that_fit_its_build(crds):
    overlay = build(KNATIVE / "overlays" / "strimzi-kafka")
    (config,) = [
        d for d in overlay if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "kml-settings"
    ]
    settings = Settings.from_env(config["data"])  # what register runs with on that cluster
    docs = render_inference_manifests(SPEC, settings)
    assert _kinds(docs) == [
        "Service",
        "KafkaSource",
        "NetworkPolicy",
        "KafkaTopic",
        "KafkaTopic",
    ]
    assert check_documents(overlay + docs, crds) == []
    assert missing_topics(docs, overlay + docs) == []


def _threads(container: dict) -> int:
    command = container["command"]
    return int(command[command.index("--threads") + 1])


def test_the_service_runs_one_slot_per_request_let_in_and_threads_for_the_probes():
    service = render_inference_manifests(SPEC, Settings())[0]
    pod = service["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    slots = int(env["KML_INFER_REQUEST_SLOTS"])
    assert slots == pod["containerConcurrency"] == 12
    assert _threads(container) == slots + PROBE_THREADS
    assert container["command"][-1] == "functions.infer.app:create_app()"


def test_the_infer_template_of_the_base_keeps_threads_above_its_slots():
    (service,) = [
        d
        for d in build(KNATIVE / "base")
        if d["kind"] == "Service" and d["metadata"]["name"] == "kml-infer"
    ]
    pod = service["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["KML_INFER_REQUEST_SLOTS"]) == pod["containerConcurrency"]
    assert _threads(container) == pod["containerConcurrency"] + PROBE_THREADS
