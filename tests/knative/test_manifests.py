"""Every kustomize build of knative/ validates: schemas, Knative's limits, our own rules."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from kml.kustomize import build, resource_id
from kml.manifests_check import check_documents, missing_topics
from tests.knative.conftest import BUILDS, KNATIVE


def by_name(docs, kind, name):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def test_the_crd_schemas_cover_service_kafkasource_and_jobsink(crds):
    kinds = {kind for _, _, kind in crds}
    assert {"Service", "KafkaSource", "JobSink"} <= kinds


@pytest.mark.parametrize("path", BUILDS)
def test_every_build_validates_against_schemas_and_rules(crds, path):
    docs = build(KNATIVE / path)
    assert docs
    assert check_documents(docs, crds) == []


@pytest.mark.parametrize("path", BUILDS)
def test_every_topic_has_a_kafka_topic_in_the_strimzi_overlay(path):
    strimzi = build(KNATIVE / "overlays/strimzi-kafka")
    assert missing_topics(build(KNATIVE / path), strimzi) == []
    topics = {
        d["spec"].get("topicName") or d["metadata"]["name"]
        for d in strimzi
        if d["kind"] == "KafkaTopic"
    }
    assert topics == {
        "kml-control",
        "KAFKA_ML_CONTROL_TOPIC",
        "kml-models",
        "kml-results",
        "kml-dlq",
    }


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed here")
@pytest.mark.parametrize("path", BUILDS)
def test_python_build_equals_kubectl_kustomize(path):
    out = subprocess.run(
        ["kubectl", "kustomize", str(KNATIVE / path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    theirs = {resource_id(d): d for d in yaml.safe_load_all(out) if d}
    mine = {resource_id(d): d for d in build(KNATIVE / path)}
    assert mine == theirs


def test_services_scale_to_zero_within_knative_limits():
    docs = build(KNATIVE / "base")
    for name in ("kml-register", "kml-train", "kml-infer"):
        svc = by_name(docs, "Service", name)
        template = svc["spec"]["template"]
        notes = template["metadata"]["annotations"]
        assert notes["autoscaling.knative.dev/min-scale"] == "0"
        assert int(notes["autoscaling.knative.dev/max-scale"]) >= 1
        assert template["spec"]["timeoutSeconds"] <= 600
        container = template["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/readiness"
        own = "kml-s3-" + name.removeprefix("kml-")  # each function its own S3 key
        secrets = {e.get("secretRef", {}).get("name") for e in container["envFrom"]} - {None}
        assert secrets == {own}, name
    assert (
        by_name(docs, "Service", "kml-train")["spec"]["template"]["spec"]["containerConcurrency"]
        == 1
    )


def test_kafka_sources_have_group_explicit_delivery_ordering_and_dead_letter_topic():
    docs = build(KNATIVE / "base")
    sink = by_name(docs, "KafkaSink", "kml-dlq")
    assert sink["apiVersion"] == "eventing.knative.dev/v1alpha1"
    assert sink["spec"]["topic"] == "kml-dlq"
    for name, service in (("kml-models", "kml-register"), ("kml-control", "kml-train")):
        spec = by_name(docs, "KafkaSource", name)["spec"]
        assert spec["topics"][0] == name and spec["consumerGroup"]
        assert spec["ordering"] == "ordered"
        assert spec["sink"]["ref"]["name"] == service
        delivery = spec["delivery"]
        assert delivery["backoffPolicy"] == "exponential" and delivery["retry"] >= 1
        assert delivery["deadLetterSink"]["ref"]["kind"] == "KafkaSink"
        assert delivery["deadLetterSink"]["ref"]["name"] == "kml-dlq"


def test_sources_with_arbitrary_keys_deliver_them_as_base64():
    """With the default string key type the dispatcher drops control-byte keys and sends
    128..255 as '?': Kafka-ML's one-byte deployment ids need the byte-array key type."""
    docs = build(KNATIVE / "base")
    for name in ("kml-control", "kml-models"):
        labels = by_name(docs, "KafkaSource", name)["metadata"]["labels"]
        assert labels["kafkasources.sources.knative.dev/key-type"] == "byte-array", name


def test_the_control_source_follows_kafka_mls_default_control_topic():
    for path in BUILDS:
        control = by_name(build(KNATIVE / path), "KafkaSource", "kml-control")["spec"]
        assert control["topics"] == ["kml-control", "KAFKA_ML_CONTROL_TOPIC"], path


def test_secrets_are_placeholders_and_settings_hold_none():
    docs = build(KNATIVE / "base")
    for function in ("register", "train", "infer", "dashboard"):
        secret = by_name(docs, "Secret", f"kml-s3-{function}")
        assert all(v.startswith("CHANGE-ME") for v in secret["stringData"].values())
    assert not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "kml-s3"]
    settings = by_name(docs, "ConfigMap", "kml-settings")["data"]
    assert not any("SECRET" in k or "ACCESS_KEY" in k for k in settings)


def test_jobsink_overlay_routes_control_messages_to_the_batch_entry():
    docs = build(KNATIVE / "overlays/jobsink")
    control = by_name(docs, "KafkaSource", "kml-control")["spec"]
    assert control["sink"]["ref"] == {
        "apiVersion": "sinks.knative.dev/v1alpha1",
        "kind": "JobSink",
        "name": "kml-train-job",
    }
    job = by_name(docs, "JobSink", "kml-train-job")["spec"]["job"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "functions.train"]
    assert by_name(docs, "KafkaSource", "kml-models")["spec"]["sink"]["ref"]["kind"] == "Service"


def test_overlays_point_settings_at_the_in_cluster_kafka_and_minio():
    strimzi = build(KNATIVE / "overlays/strimzi-kafka")
    bootstrap = "kml-kafka-kafka-bootstrap.kml.svc:9092"
    assert by_name(strimzi, "ConfigMap", "kml-settings")["data"]["KML_KAFKA_BOOTSTRAP"] == bootstrap
    for d in strimzi:
        if d["kind"] in ("KafkaSource", "KafkaSink"):
            assert d["spec"]["bootstrapServers"] == [bootstrap]
    minio = build(KNATIVE / "overlays/in-cluster-minio")
    assert (
        by_name(minio, "ConfigMap", "kml-settings")["data"]["KML_S3_ENDPOINT"]
        == "http://kml-minio.kml.svc:9000"
    )
    assert {d["kind"] for d in minio} >= {"Deployment", "PersistentVolumeClaim", "Secret"}


def test_containerfiles_keep_tensorflow_out_of_infer():
    """Each image installs its own extra and fails its build if a forbidden module imports."""
    images = KNATIVE / "images"
    train = (images / "train.Containerfile").read_text()
    assert "install.sh deps train\n" in train and "COPY kml" not in train
    infer = (images / "infer.Containerfile").read_text()
    assert "install.sh app infer tensorflow kml typer rich requests" in infer
    assert "install.sh deps infer\n" in infer and "install.sh deps train" not in infer
    assert "COPY kml" not in infer and "COPY functions/infer" in infer
    assert "functions.register.app:create_app()" in (images / "register.Containerfile").read_text()


def test_only_the_project_functions_must_scale_to_zero():
    from kml.manifests_rules import check_autoscaling

    warm = {"autoscaling.knative.dev/min-scale": "2", "autoscaling.knative.dev/max-scale": "5"}
    assert check_autoscaling(warm, scale_to_zero=False) == []
    assert any("scales to zero" in p for p in check_autoscaling(warm, scale_to_zero=True))
    inverted = {"autoscaling.knative.dev/min-scale": "6", "autoscaling.knative.dev/max-scale": "5"}
    assert any("> max-scale" in p for p in check_autoscaling(inverted, scale_to_zero=False))
