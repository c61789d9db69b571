"""Stream-mode manifests: a Deployment and a KEDA ScaledObject that validate against KEDA's CRD
schema and the Kubernetes schemas, scale to zero, and name the group the consumers join."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from functions.infer.stream import consumer_config
from kafkaml.manifests import STREAM, render_inference_manifests, to_yaml
from kafkaml.settings import Settings
from kml.manifests_check import check_documents, missing_topics, schema_problems
from storage.specs import InferenceSpec

SPEC = {
    "id": "digits1",
    "run_id": "run-abc",
    "model": "clf",
    "input_format": "RAW",
    "input_config": {"data_type": "float32", "data_reshape": "8 8"},
    "input_topic": "digits-in",
    "output_topic": "digits-out",
    "min_scale": 0,
    "max_scale": 4,
    "target_concurrency": 8,
    "mode": STREAM,
    "created": "2026-01-01T00:00:00.000Z",
}
SETTINGS = Settings(
    namespace="kml", kafka_bootstrap="kafka-a:9092, kafka-b:9092", s3_secret_key="very-secret-value"
)
BASE = Path(__file__).resolve().parents[3] / "knative" / "base"


@pytest.fixture(scope="module")
def docs() -> dict[str, dict]:
    return {d["kind"]: d for d in render_inference_manifests(SPEC, SETTINGS)}


def test_stream_mode_renders_a_deployment_and_a_scaled_object_instead_of_knative(docs):
    assert set(docs) == {"Deployment", "ScaledObject", "NetworkPolicy"}
    assert docs["Deployment"]["apiVersion"] == "apps/v1"
    assert docs["ScaledObject"]["apiVersion"] == "keda.sh/v1alpha1"
    event = render_inference_manifests({**SPEC, "mode": "event"}, SETTINGS)
    assert [d["kind"] for d in event] == ["Service", "KafkaSource", "NetworkPolicy"]
    unset = {k: v for k, v in SPEC.items() if k != "mode"}  # specs stored before modes existed
    assert [d["kind"] for d in render_inference_manifests(unset, SETTINGS)] == [
        "Service",
        "KafkaSource",
        "NetworkPolicy",
    ]


@pytest.mark.skipif(not BASE.is_dir(), reason="knative/base not in this checkout")
def test_stream_manifests_validate_against_keda_and_kubernetes_schemas_within_the_build(docs, crds):
    from kml.kustomize import build

    assert ("keda.sh", "v1alpha1", "ScaledObject") in crds
    assert check_documents(build(BASE) + list(docs.values()), crds) == []


def test_a_misspelt_field_or_a_wrong_type_would_be_caught(docs, crds):
    """The checks above can fail: KEDA's schema is strict, the Deployment meets the core one."""
    scaled = yaml.safe_load(to_yaml([docs["ScaledObject"]]))
    scaled["spec"]["minReplicas"] = 0
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 10  # KEDA wants strings
    problems = schema_problems(scaled, crds)
    assert any("minReplicas" in p for p in problems)
    assert any("lagThreshold" in p for p in problems)
    deployment = yaml.safe_load(to_yaml([docs["Deployment"]]))
    deployment["spec"]["replicas"] = "none"
    assert any("replicas" in p for p in schema_problems(deployment, crds))


def test_the_deployment_scales_to_zero_and_keda_owns_its_replicas(docs):
    deployment, scaled = docs["Deployment"], docs["ScaledObject"]
    assert deployment["spec"]["replicas"] == 0
    assert scaled["spec"]["minReplicaCount"] == 0
    assert scaled["spec"]["maxReplicaCount"] == 4
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        deployment["metadata"]["name"],
    )
    warm = render_inference_manifests({**SPEC, "min_scale": 2}, SETTINGS)
    assert warm[0]["spec"]["replicas"] == 2 and warm[1]["spec"]["minReplicaCount"] == 2


def test_the_scaled_object_watches_the_group_the_consumers_join_on_the_input_topic(docs):
    (trigger,) = docs["ScaledObject"]["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    consumer = consumer_config(SETTINGS.replace(inference_id="digits1"))
    assert meta["consumerGroup"] == consumer["group.id"] == "kml-infer-digits1"
    assert consumer["enable.auto.commit"] is False
    assert meta["topic"] == "digits-in"
    assert meta["bootstrapServers"] == "kafka-a:9092,kafka-b:9092"
    assert int(meta["lagThreshold"]) > 0
    # A group with no commit yet counts from the beginning, or it would never wake from zero.
    assert meta["offsetResetPolicy"] == "earliest"
    assert missing_topics([docs["ScaledObject"]], []) == [
        "ScaledObject/kml-infer-digits1: topic 'digits-in' has no KafkaTopic in the "
        "strimzi-kafka overlay"
    ]


def test_the_pods_run_the_stream_loop_with_probes_and_settings_from_cluster_objects(docs):
    pod = docs["Deployment"]["spec"]["template"]
    assert pod["metadata"]["labels"] == docs["Deployment"]["spec"]["selector"]["matchLabels"] | {
        "app.kubernetes.io/name": "kml-infer",
        "app.kubernetes.io/part-of": "kafka-ml-knative",
    }
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["python", "-m", "functions.infer.stream"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["KML_INFERENCE_ID"] == "digits1"
    port = int(env["KML_INFER_STREAM_PORT"])
    assert container["ports"][0]["containerPort"] == port
    for probe, path in (
        ("readinessProbe", "/health/readiness"),
        ("livenessProbe", "/health/liveness"),
    ):
        assert container[probe]["httpGet"] == {"path": path, "port": port}
    assert container["envFrom"] == [
        {"configMapRef": {"name": "kml-settings"}},
        {"secretRef": {"name": "kml-s3-infer"}},
    ]
    assert "very-secret-value" not in to_yaml(list(docs.values()))


def test_register_accepts_event_and_stream_mode_and_names_a_wrong_one():
    body = {k: SPEC[k] for k in ("run_id", "input_topic", "output_topic")}
    assert InferenceSpec.problems({**body, "mode": "stream"}) == []
    assert InferenceSpec.problems({**body, "mode": "event"}) == []
    assert InferenceSpec.problems(body) == []
    assert InferenceSpec.problems({**body, "mode": "batch"}) == [
        "mode: 'batch' must be one of event, stream"
    ]
    assert (
        InferenceSpec.from_dict(
            {**body, "model": "m", "input_format": "RAW", "input_config": {}}
        ).mode
        == "event"
    )


def test_register_stores_a_stream_spec_and_its_stream_manifests():
    from functions.register import handlers
    from kafkaml import events
    from kafkaml.errors import ValidationFailed
    from kafkaml.events import new_event
    from storage.registry import Registry
    from tests.fakes import MemoryStore

    registry = Registry(MemoryStore("unit"))
    registry.put_datasource(
        "ds", {"control_message": {"input_format": "RAW", "input_config": {"data_type": "float32"}}}
    )
    _, etag = registry.get_run(registry.claim_run("run-1", {"datasource_id": "ds"})[0]["run_id"])
    _, etag = registry.update_run("run-1", etag, status="running")
    key = registry.run_artifact_key("run-1", "m", "model.tflite")
    registry.store.put(key, b"tflite")
    registry.update_run(
        "run-1", etag, status="succeeded", models={"m": {"artifacts": {"model.tflite": key}}}
    )
    body = {"id": "s1", "run_id": "run-1", "input_topic": "in", "output_topic": "out"}

    def create(data):
        event = new_event(events.INFERENCE_CREATE, "/tests/stream", data)
        return handlers.handle_event(registry, SETTINGS, event)[0].data

    record = create({**body, "mode": "stream"})
    assert registry.get_inference("s1")["mode"] == record["mode"] == "stream"
    kinds = [d["kind"] for d in yaml.safe_load_all(registry.get_inference_manifests("s1"))]
    assert kinds == ["Deployment", "ScaledObject", "NetworkPolicy"]
    with pytest.raises(ValidationFailed) as bad:
        create({**body, "id": "s2", "mode": "batch"})
    assert bad.value.problems == ["mode: 'batch' must be one of event, stream"]


def test_with_a_sasl_kafka_keda_reads_the_lag_as_infer_s_own_kafka_user(crds):
    scram = SETTINGS.replace(
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_username="kml-infer", kafka_password="scram-secret", kafka_ca_file="/run/ca.crt",
    )  # fmt: skip
    docs = {d["kind"]: d for d in render_inference_manifests(SPEC, scram)}
    assert set(docs) == {"Deployment", "TriggerAuthentication", "ScaledObject", "NetworkPolicy"}
    (trigger,) = docs["ScaledObject"]["spec"]["triggers"]
    assert (trigger["metadata"]["sasl"], trigger["metadata"]["tls"]) == ("scram_sha512", "enable")
    auth = docs["TriggerAuthentication"]
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    assert auth["metadata"]["namespace"] == docs["ScaledObject"]["metadata"]["namespace"]
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs == {
        "username": ("kml-kafka-infer", "user"),
        "password": ("kml-kafka-infer", "password"),
        "ca": ("kml-kafka-infer", "ca.crt"),
    }  # the Secret the pods and the KafkaSource use; its values never in a manifest
    assert "scram-secret" not in to_yaml(list(docs.values()))
    from kml.kustomize import build

    overlay = build(BASE.parent / "overlays" / "strimzi-scram")  # where kml-kafka-infer is
    assert check_documents(overlay + list(docs.values()), crds) == []
    alone = check_documents([docs["ScaledObject"], docs["TriggerAuthentication"]], crds)
    assert any("secretTargetRef username names Secret 'kml-kafka-infer'" in p for p in alone)
    lost = check_documents([d for k, d in docs.items() if k != "TriggerAuthentication"], crds)
    assert any("authenticationRef names TriggerAuthentication" in p for p in lost)
    typo = yaml.safe_load(to_yaml([auth]))
    typo["spec"]["secretTargetRefs"] = typo["spec"].pop("secretTargetRef")
    assert schema_problems(typo, crds)  # KEDA's schema would refuse a misspelt field


def test_a_plaintext_kafka_needs_no_trigger_authentication_and_an_odd_mechanism_is_named(docs):
    (trigger,) = docs["ScaledObject"]["spec"]["triggers"]
    assert "authenticationRef" not in trigger and "sasl" not in trigger["metadata"]
    from kafkaml.errors import ValidationFailed

    gssapi = SETTINGS.replace(
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="GSSAPI"
    )
    with pytest.raises(ValidationFailed, match="GSSAPI"):
        render_inference_manifests(SPEC, gssapi)
