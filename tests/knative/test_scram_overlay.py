"""The strimzi-scram overlay: Kafka's one listener takes SCRAM users only, each function (and the
dead-letter sink) has a KafkaUser whose ACLs allow what it does and deny the control plane's
topics to infer, and every client is wired to its own user's Secret."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest

from kml.kustomize import build
from kml.manifests_check import check_documents, load_crd_schemas

KNATIVE = Path(__file__).resolve().parents[2] / "knative"
STRIMZI_SCHEMAS = Path(__file__).resolve().parents[3] / "shared" / "schemas" / "strimzi"


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return build(KNATIVE / "overlays/strimzi-scram")


def named(docs, kind, name):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def allowed(user: dict, topic: str, op: str) -> bool:
    """Kafka's simple authorizer: a matching deny wins over any allow."""
    verdicts = set()
    for rule in user["spec"]["authorization"]["acls"]:
        r = rule["resource"]
        if r["type"] != "topic" or op not in rule["operations"]:
            continue
        name, prefix = r["name"], r.get("patternType") == "prefix"
        if name == "*" or name == topic or (prefix and topic.startswith(name)):
            verdicts.add(rule.get("type", "allow"))
    return verdicts == {"allow"}


def test_the_overlay_validates_and_its_references_resolve(docs, crds):
    assert check_documents(docs, crds) == []


def test_kafka_users_validate_against_strimzis_schema(docs):
    schemas = load_crd_schemas(STRIMZI_SCHEMAS) if STRIMZI_SCHEMAS.is_dir() else {}
    schema = schemas.get(("kafka.strimzi.io", "v1", "KafkaUser"))
    if schema is None:
        pytest.skip(f"no Strimzi KafkaUser schema in {STRIMZI_SCHEMAS}")
    users = [d for d in docs if d["kind"] == "KafkaUser"]
    assert {u["metadata"]["name"] for u in users} == {
        "kml-register",
        "kml-train",
        "kml-infer",
        "kml-dashboard",
        "kml-dlq",
    }
    for user in users:  # the spec is the same in v1beta2 and v1; the folder holds v1
        jsonschema.validate({**copy.deepcopy(user), "apiVersion": "kafka.strimzi.io/v1"}, schema)


def test_acls_per_function(docs):
    user = {n: named(docs, "KafkaUser", f"kml-{n}") for n in ("register", "train", "infer")}
    assert allowed(user["train"], "sensor-data", "Read")
    assert allowed(user["train"], "kml-results", "Write")
    assert not allowed(user["train"], "kml-control", "Write")
    assert not allowed(user["train"], "kml-models", "Write")
    assert allowed(user["infer"], "digits-in", "Read") and allowed(
        user["infer"], "digits-out", "Write"
    )
    assert allowed(user["infer"], "kml-dlq", "Write")
    for topic in ("kml-control", "KAFKA_ML_CONTROL_TOPIC", "kml-models", "kml-results"):
        assert not allowed(user["infer"], topic, "Write"), topic
    assert allowed(user["register"], "kml-models", "Read")
    assert allowed(user["register"], "kml-control", "Write")
    assert allowed(user["register"], "kml-results", "Write")


def test_the_listener_takes_scram_and_every_client_its_own_user(docs):
    kafka = named(docs, "Kafka", "kml-kafka")["spec"]["kafka"]
    assert [li["authentication"]["type"] for li in kafka["listeners"]] == ["scram-sha-512"]
    assert kafka["authorization"] == {"type": "simple"}
    settings = named(docs, "ConfigMap", "kml-settings")["data"]
    assert settings["KML_KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    for source, function in (("kml-models", "register"), ("kml-control", "train")):
        sasl = named(docs, "KafkaSource", source)["spec"]["net"]["sasl"]
        assert sasl["enable"] is True
        assert {sasl[k]["secretKeyRef"]["name"] for k in ("user", "password", "type")} == {
            f"kml-kafka-{function}"
        }
    assert named(docs, "KafkaSink", "kml-dlq")["spec"]["auth"]["secret"]["ref"]["name"] in secrets
    for function in ("register", "train", "infer", "dashboard"):
        container = named(docs, "Service", f"kml-{function}")["spec"]["template"]["spec"]
        env = {e["name"]: e for e in container["containers"][0]["env"]}
        ref = env["KML_KAFKA_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": f"kml-kafka-{function}", "key": "password"}
        assert ref["name"] in secrets
    for name in secrets - {"kml-tokens"}:
        values = named(docs, "Secret", name).get("stringData", {})
        assert not any(
            k in ("password", "KML_S3_SECRET_KEY") and not v.startswith("CHANGE-ME")
            for k, v in values.items()
        ), name
