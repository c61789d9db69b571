"""The validator reports a manifest broken on purpose (in a temporary copy of knative/)."""

from __future__ import annotations

import shutil

import pytest

from kml.kustomize import KustomizeError, build
from kml.manifests_check import check_documents, missing_topics
from tests.knative.conftest import KNATIVE


@pytest.fixture
def tree(tmp_path):
    copy = tmp_path / "knative"
    shutil.copytree(KNATIVE, copy)
    return copy


def edit(path, old, new):
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_a_timeout_above_600_and_a_misspelt_field_are_reported(tree, crds):
    edit(tree / "base/train.yaml", "timeoutSeconds: 600", "timeoutSeconds: 900")
    edit(
        tree / "base/kafkasource-models.yaml",
        "backoffPolicy: exponential",
        "backofPolicy: exponential",
    )
    problems = check_documents(build(tree / "base"), crds)
    assert problems == [
        "Service/kml-train: spec.template.spec.timeoutSeconds=900 must be set, 1..600",
        "KafkaSource/kml-models: spec.delivery: Additional properties are not allowed "
        "('backofPolicy' was unexpected)",
        "KafkaSource/kml-models: spec.delivery.backoffPolicy must be set",
    ]


def test_autoscaling_out_of_range_is_reported(tree, crds):
    edit(tree / "base/register.yaml", 'max-scale: "5"', 'max-scale: "-1"')
    edit(tree / "base/infer.yaml", "containerConcurrency: 16", "containerConcurrency: 1001")
    edit(tree / "base/train.yaml", 'target: "1"', 'target: "0"')
    problems = check_documents(build(tree / "base"), crds)
    assert (
        "Service/kml-register: autoscaling.knative.dev/max-scale='-1' is not an integer >= 0"
        in problems
    )
    assert (
        "Service/kml-infer: spec.template.spec.containerConcurrency=1001 must be set, 0..1000"
        in problems
    )
    assert "Service/kml-train: autoscaling.knative.dev/target='0' is not > 0" in problems


def test_a_sink_naming_a_missing_service_is_reported(tree, crds):
    edit(tree / "base/kafkasource-control.yaml", "name: kml-train", "name: kml-trainer")
    problems = check_documents(build(tree / "base"), crds)
    assert problems == [
        "KafkaSource/kml-control: spec.sink names Service kml/kml-trainer, "
        "which is not in the build"
    ]


def test_a_topic_without_kafka_topic_is_reported(tree):
    edit(tree / "base/kafkasource-models.yaml", "- kml-models", "- kml-model-events")
    strimzi = build(tree / "overlays/strimzi-kafka")
    assert missing_topics(build(tree / "base"), strimzi) == [
        "KafkaSource/kml-models: topic 'kml-model-events' has no KafkaTopic in the "
        "strimzi-kafka overlay"
    ]


def test_a_wrong_core_field_type_and_an_inline_secret_are_reported(tree, crds):
    edit(tree / "overlays/in-cluster-minio/minio.yaml", "replicas: 1", "replicas: one")
    edit(
        tree / "base/infer.yaml",
        "- name: KML_INFERENCE_ID",
        "- name: KML_S3_SECRET_KEY\n              value: hunter2\n"
        "            - name: KML_INFERENCE_ID",
    )
    problems = check_documents(build(tree / "overlays/in-cluster-minio"), crds)
    assert "Deployment/kml-minio: spec.replicas: 'one' is not of type 'integer', 'null'" in problems
    inline = (
        "Service/kml-infer: spec.template.spec.containers[0].env KML_S3_SECRET_KEY: "
        "a secret must come from a Secret"
    )
    assert any(p.startswith(inline) for p in problems)


def test_an_unsupported_kustomize_field_fails_the_build(tree):
    edit(tree / "base/kustomization.yaml", "namespace: kml", "namespace: kml\nnamePrefix: x-")
    with pytest.raises(KustomizeError, match=r"unsupported field\(s\) \['namePrefix'\]"):
        build(tree / "base")
