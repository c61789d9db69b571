"""Rendered inference manifests validate against Knative's CRD schemas and fit the base build."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from kafkaml.manifests import render_inference_manifests, to_yaml
from kafkaml.settings import Settings
from kml.manifests_check import check_documents, rule_problems, schema_problems

SPEC = {
    "id": "digits1",
    "run_id": "run-abc",
    "model": "clf",
    "input_format": "RAW",
    "input_config": {"data_type": "uint8"},
    "input_topic": "digits-in",
    "output_topic": "digits-out",
    "min_scale": 0,
    "max_scale": 4,
    "target_concurrency": 8,
    "created": "2026-01-01T00:00:00.000Z",
}
SETTINGS = Settings(
    namespace="kml", kafka_bootstrap="kafka-a:9092, kafka-b:9092", s3_secret_key="very-secret-value"
)
BASE = Path(__file__).resolve().parents[3] / "knative" / "base"


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return render_inference_manifests(SPEC, SETTINGS)


def test_each_document_validates_against_its_schema(docs, crds):
    for doc in docs:  # CRDs by their schemas, the NetworkPolicy by Kubernetes' own
        assert schema_problems(doc, crds) == []
        assert rule_problems(doc) == []


def test_a_misspelt_field_would_be_caught(docs, crds):
    """The strict schema refuses what Knative would drop, so the test above can fail."""
    bad = yaml.safe_load(to_yaml([docs[1]]))
    bad["spec"]["consumerGroups"] = "x"
    schema = crds[("sources.knative.dev", "v1beta1", "KafkaSource")]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(bad)


@pytest.mark.skipif(not BASE.is_dir(), reason="knative/base not in this checkout")
def test_references_resolve_within_the_base_build(docs, crds):
    from kml.kustomize import build

    assert check_documents(build(BASE) + docs, crds) == []


def test_service_scales_as_asked_and_reads_settings_from_cluster_objects(docs):
    warm = render_inference_manifests({**SPEC, "min_scale": 2}, SETTINGS)[0]
    assert (
        warm["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"]
        == "2"
    )
    template = docs[0]["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/min-scale"] == "0"
    assert annotations["autoscaling.knative.dev/max-scale"] == "4"
    assert annotations["autoscaling.knative.dev/target"] == "8"
    assert template["spec"]["containerConcurrency"] == 8
    assert 0 < template["spec"]["timeoutSeconds"] <= 600
    container = template["spec"]["containers"][0]
    assert {"name": "KML_INFERENCE_ID", "value": "digits1"} in container["env"]
    assert container["envFrom"] == [
        {"configMapRef": {"name": "kml-settings"}},
        {"secretRef": {"name": "kml-s3-infer"}},
    ]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/readiness"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/liveness"
    assert "very-secret-value" not in to_yaml(docs)


def test_source_feeds_the_service_and_dead_letters(docs):
    spec = docs[1]["spec"]
    assert spec["bootstrapServers"] == ["kafka-a:9092", "kafka-b:9092"]
    assert spec["topics"] == ["digits-in"] and spec["consumerGroup"] == "kml-infer-digits1"
    assert spec["sink"]["ref"]["name"] == docs[0]["metadata"]["name"] == "kml-infer-digits1"
    delivery = spec["delivery"]
    assert delivery["retry"] > 0 and delivery["backoffPolicy"] == "exponential"
    assert delivery["backoffDelay"].startswith("PT") and delivery["timeout"].startswith("PT")
    assert delivery["deadLetterSink"]["ref"]["kind"] == "KafkaSink"
    assert delivery["deadLetterSink"]["ref"]["name"] == SETTINGS.dlq_topic


def test_source_delivers_input_keys_as_base64_so_every_byte_survives(docs):
    labels = docs[1]["metadata"]["labels"]
    assert labels["kafkasources.sources.knative.dev/key-type"] == "byte-array"
    assert labels["app.kubernetes.io/name"] == "kml-infer"


def test_yaml_round_trips(docs):
    assert list(yaml.safe_load_all(to_yaml(docs))) == docs
