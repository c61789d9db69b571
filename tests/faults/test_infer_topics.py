"""Inference on topics that did not exist: "deploy, then send" and "send, then deploy" both give
one prediction per record (Kafka-ML's examples do either).

Deploying creates the input, output and dead-letter topics, and returns only once the bridge
(playing the KafkaSource) holds every partition of the input topic; the source's new consumer
group starts at the topic's beginning, so records sent before the deployment are predicted too.
"""

from __future__ import annotations

import pytest

from kafkaml.kafka import end_offsets
from kafkaml.manifests import TOPIC_PARTITIONS, service_name
from kml.dev.bridge.runner import read_status
from kml.dev.inference import start_local_inference, stop_local_inference
from tests.faults.infer_helpers import Published, collect, publish_paced, running_bridge
from tests.functions.infer.conftest import deploy

pytestmark = pytest.mark.integration

N = 40


def _records(digits) -> list[tuple[bytes, bytes, bool]]:
    return [(digits.inputs[i].tobytes(), f"k-{i}".encode(), True) for i in range(N)]


def test_deploy_then_send_creates_the_topics_and_predicts_every_record(stack, digits, tmp_path):
    deployment = deploy(stack, digits, tmp_path / "cache", tflite=True, create_topics=False)
    spec, local = deployment.spec, deployment.settings.replace(state_dir=str(tmp_path / "state"))
    assert end_offsets(stack.kafka_bootstrap, spec["input_topic"]) == {}  # no such topic yet
    published = Published()
    with running_bridge(local, tmp_path / "bridge"):
        start_local_inference(local, deployment.id, timeout_s=240)
        try:
            # Deployed means: the topics exist and the source holds every input partition.
            for topic in (spec["input_topic"], spec["output_topic"], local.dlq_topic):
                assert len(end_offsets(stack.kafka_bootstrap, topic)) == TOPIC_PARTITIONS, topic
            (source,) = [
                s
                for s in read_status(local.state_dir)["sources"]
                if s["name"] == service_name(deployment.id)
            ]
            assert sorted(source["assigned"]) == [
                f"{spec['input_topic']}/{p}" for p in range(TOPIC_PARTITIONS)
            ]
            publish_paced(
                stack.kafka_bootstrap, spec["input_topic"], _records(digits), 0, published
            )
            tally = collect(
                stack.kafka_bootstrap,
                spec["output_topic"],
                local.dlq_topic,
                set(published.good),
                60,
            )
        finally:
            stop_local_inference(local, deployment.id)
    figures = tally.figures(published)
    print(f"\ndeploy, then send ({spec['input_topic']} did not exist): {figures}")
    assert set(tally.predicted) == set(published.good) and len(published.good) == N
    assert figures["duplicates"] == 0 and figures["lost"] == 0


def test_send_then_deploy_predicts_the_records_sent_before(stack, digits, tmp_path):
    deployment = deploy(stack, digits, tmp_path / "cache", tflite=True, create_topics=False)
    spec, local = deployment.spec, deployment.settings.replace(state_dir=str(tmp_path / "state"))
    assert end_offsets(stack.kafka_bootstrap, spec["input_topic"]) == {}
    published = Published()
    # The broker creates the topic on the first record (auto-creation), before any consumer.
    publish_paced(stack.kafka_bootstrap, spec["input_topic"], _records(digits), 0, published)
    with running_bridge(local, tmp_path / "bridge"):
        start_local_inference(local, deployment.id, timeout_s=240)
        try:
            tally = collect(
                stack.kafka_bootstrap,
                spec["output_topic"],
                local.dlq_topic,
                set(published.good),
                60,
            )
        finally:
            stop_local_inference(local, deployment.id)
    figures = tally.figures(published)
    print(f"\nsend, then deploy ({spec['input_topic']} did not exist): {figures}")
    assert set(tally.predicted) == set(published.good) and len(published.good) == N
    assert figures["duplicates"] == 0 and figures["lost"] == 0
