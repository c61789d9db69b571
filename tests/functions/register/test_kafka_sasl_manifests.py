"""With Kafka SASL/SCRAM (and TLS) in the settings, a rendered inference deployment consumes and
produces as infer's Kafka user: its KafkaSource's ``spec.net`` and its pods' environment name
the Secret ``kml-kafka-infer``, never the password, and the objects validate."""

from __future__ import annotations

from kafkaml.manifests import KAFKA_SECRET, render_inference_manifests, to_yaml
from kafkaml.settings import Settings
from kml.manifests_check import rule_problems, schema_problems
from tests.functions.register.test_manifests import SPEC

SASL = Settings(
    namespace="kml",
    kafka_bootstrap="kafka:9093",
    kafka_security_protocol="SASL_SSL",
    kafka_username="kml-infer",
    kafka_password="never-rendered-pw",
    kafka_ca_file="/etc/kml/kafka-ca/ca.crt",
)


def ref(key: str) -> dict:
    return {"secretKeyRef": {"name": KAFKA_SECRET, "key": key}}


def test_event_mode_source_and_service_use_infers_kafka_user(crds):
    docs = render_inference_manifests(SPEC, SASL)
    for doc in docs:
        assert schema_problems(doc, crds) == [] and rule_problems(doc) == []
    source = next(d for d in docs if d["kind"] == "KafkaSource")["spec"]
    assert source["net"] == {
        "sasl": {
            "enable": True,
            "user": ref("user"),
            "password": ref("password"),
            "type": ref("sasl.mechanism"),
        },
        "tls": {"enable": True, "caCert": ref("ca.crt")},
    }
    service = next(d for d in docs if d["kind"] == "Service")
    env = {e["name"]: e for e in service["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KML_KAFKA_PASSWORD"]["valueFrom"] == ref("password")
    assert env["KML_KAFKA_USERNAME"]["valueFrom"] == ref("user")
    assert "never-rendered-pw" not in to_yaml(docs)


def test_stream_mode_pods_carry_the_user_and_plaintext_renders_no_net(crds):
    docs = render_inference_manifests({**SPEC, "mode": "stream"}, SASL)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    names = [e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert {"KML_KAFKA_USERNAME", "KML_KAFKA_PASSWORD"} <= set(names)
    plain = render_inference_manifests(SPEC, Settings(namespace="kml"))
    assert "net" not in next(d for d in plain if d["kind"] == "KafkaSource")["spec"]


def test_the_pods_find_the_kafka_ca_where_the_settings_point_in_both_modes(crds):
    for mode in ("event", "stream"):
        docs = render_inference_manifests({**SPEC, "mode": mode}, SASL)
        workload = next(d for d in docs if d["kind"] in ("Service", "Deployment"))
        pod = workload["spec"]["template"]["spec"]
        assert schema_problems(workload, crds) == [] and rule_problems(workload) == []
        [volume] = [v for v in pod["volumes"] if v["name"] == "kafka-ca"]
        assert volume["secret"] == {
            "secretName": KAFKA_SECRET,
            "items": [{"key": "ca.crt", "path": "ca.crt"}],
        }
        [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "kafka-ca"]
        assert (mount["mountPath"], mount["readOnly"]) == ("/etc/kml/kafka-ca", True)
    without_ca = render_inference_manifests(SPEC, SASL.replace(kafka_ca_file=""))
    service = next(d for d in without_ca if d["kind"] == "Service")["spec"]["template"]["spec"]
    assert [v["name"] for v in service["volumes"]] == ["tokens"]  # the system's trust store
