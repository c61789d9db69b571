"""Who may call what: each attack by a caller without a token, or with too small a token, and
its refusal. The functions run as they do in production (the register app over an in-memory
store, the infer app over a fixed model); the tokens table is written here, hashed."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from pathlib import Path

import numpy as np
import pytest
from flask import Blueprint

from functions.infer.app import create_app as infer_app
from functions.register.app import create_app as register_app
from kafkaml.events import CONFIGURATION_CREATE, INFERENCE_CREATE, new_event, to_http
from kafkaml.manifests import render_inference_manifests
from kafkaml.settings import Settings
from kafkaml.web import Function, function_app, json_response
from kml.kustomize import build
from storage.registry import Registry
from tests.fakes import MemoryStore
from tests.functions.infer.fakes import SPEC, LinearModel, RecordingProducer, fixed_loader

KNATIVE = Path(__file__).resolve().parents[2] / "knative"
SCOPES = {"reader": ["read"], "writer": ["read", "write"], "predictor": ["predict"]}
SCOPES["bridge"] = ["deliver"]  # what the data plane holds
KNATIVE_NAMESPACES = {"knative-serving", "kourier-system", "knative-eventing"}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> dict[str, str]:
    """name -> token; the table on disk holds only their SHA-256 digests."""
    path = tmp_path_factory.mktemp("tokens") / "tokens.json"
    clear = {name: "kml_" + secrets.token_urlsafe(24) for name in SCOPES}
    table = {
        hashlib.sha256(clear[name].encode()).hexdigest(): {"name": name, "scopes": scopes}
        for name, scopes in SCOPES.items()
    }
    path.write_text(json.dumps(table))
    assert not any(token in path.read_text() for token in clear.values())
    return {"file": str(path), **clear}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def register(tokens):
    """register as deployed: its store, its client, its tokens file."""
    store = MemoryStore("unit")
    settings = Settings(bucket="unit", namespace="kml", auth_tokens_file=tokens["file"])
    app = register_app(settings, Registry(store))
    return store, app.test_client()


def post_event(client, type_: str, data, token: str | None = None, event_id: str | None = None):
    event = new_event(type_, "/tests/attacker", data)
    headers, body = to_http(event)
    if event_id:
        headers["ce-id"] = event_id
    return client.post("/", headers={**headers, **(bearer(token) if token else {})}, data=body)


def test_register_without_a_token_answers_401_and_stores_nothing(register):
    store, client = register
    listed = client.get("/models")
    assert listed.status_code == 401
    assert listed.get_json()["kind"] == "unauthorized"
    assert listed.headers["WWW-Authenticate"].startswith("Bearer")
    made = post_event(client, CONFIGURATION_CREATE, {"name": "c", "models": ["m@1"]})
    assert made.status_code == 401
    forged = client.get("/models", headers=bearer("kml_" + secrets.token_urlsafe(24)))
    assert forged.status_code == 401 and "unknown" in forged.get_json()["error"]
    assert store.list("") == []  # nothing was claimed, nothing was written
    assert client.get("/health/readiness").status_code == 200  # the probes stay open


def test_a_read_token_reads_but_cannot_register_anything(register, tokens):
    store, client = register
    assert client.get("/models", headers=bearer(tokens["reader"])).status_code == 200
    for who in ("reader", "predictor"):
        refused = post_event(
            client, CONFIGURATION_CREATE, {"name": "c", "models": ["m@1"]}, tokens[who]
        )
        assert refused.status_code == 403
        body = refused.get_json()
        assert body["kind"] == "forbidden" and "write" in body["needed"]
        assert tokens[who] not in refused.get_data(as_text=True)  # never echoed
    assert store.list("") == []


def test_a_pre_seeded_event_id_needs_write_and_is_then_handled_as_new(register, tokens):
    """A caller who may not write cannot claim a future event id; the real event with that id,
    from the data plane, is then handled (here: refused for its unknown model), not answered
    from a forged first answer."""
    store, client = register
    future = "partition:0/offset:999999"
    data = {"name": "conf-x", "models": ["nomodel@1"]}
    seeded = post_event(client, CONFIGURATION_CREATE, data, tokens["reader"], event_id=future)
    assert seeded.status_code == 403
    assert not [k for k in store.list("") if "999999" in k]
    real = post_event(client, CONFIGURATION_CREATE, data, tokens["bridge"], event_id=future)
    assert real.status_code == 422 and "nomodel" in json.dumps(real.get_json())


def test_an_inference_image_outside_the_allowlist_is_422_naming_the_allowed(register, tokens):
    store, client = register
    data = {
        "run_id": "r1",
        "input_topic": "in",
        "output_topic": "out",
        "image": "attacker/miner:1",
    }
    answer = post_event(client, INFERENCE_CREATE, data, tokens["writer"])
    assert answer.status_code == 422
    [problem] = answer.get_json()["problems"]
    assert problem.startswith("image:") and "kml/infer:0.1.0" in problem
    assert "KML_INFER_IMAGES" in problem
    assert not store.list("inference/")


# -- forged Kafka events to infer -----------------------------------------------------------


def kafka_event(offset: int) -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-type": "dev.knative.kafka.event",
        "ce-id": f"partition:0/offset:{offset}",
        "ce-source": f"/apis/v1/namespaces/kml/kafkasources/kml-infer-{SPEC['id']}#in",
        "ce-key": base64.b64encode(b"forged").decode(),
    }


@pytest.fixture
def infer(tokens):
    def make(**changes):
        producer = RecordingProducer()
        settings = Settings(
            inference_id=SPEC["id"], dlq_topic="dlq", auth_tokens_file=tokens["file"], **changes
        )
        app = infer_app(
            settings, loader=fixed_loader(LinearModel()), producer_factory=lambda s: producer
        )
        assert app.extensions["kml.infer"].wait_ready(5)
        made.append(app)
        return app.test_client(), producer

    made: list = []
    yield make
    for app in made:
        app.extensions["kml.infer"].close()


def test_forged_kafka_events_are_refused_without_the_data_planes_credential(infer, tokens):
    client, producer = infer()
    value = np.ones(64, np.float32).tobytes()
    assert client.post("/", data=value, headers=kafka_event(1)).status_code == 401
    for who in ("reader", "writer", "predictor"):  # a user's token is never the data plane's
        refused = client.post("/", data=value, headers={**kafka_event(2), **bearer(tokens[who])})
        assert refused.status_code == 403 and "deliver" in refused.get_json()["needed"]
    assert producer.sent == []  # no forged prediction reached the output topic
    delivered = client.post("/", data=value, headers={**kafka_event(3), **bearer(tokens["bridge"])})
    assert delivered.status_code == 200 and len(producer.on(SPEC["output_topic"])) == 1


def test_predict_needs_the_predict_scope(infer, tokens):
    client, _ = infer()
    path, body = f"/v1/models/{SPEC['id']}:predict", {"instances": [[0.0] * 64]}
    assert client.post(path, json=body).status_code == 401
    assert client.post(path, json=body, headers=bearer(tokens["reader"])).status_code == 403
    assert client.post(path, json=body, headers=bearer(tokens["predictor"])).status_code == 200
    assert client.get("/metrics").status_code == 200  # scraped without a token


def test_with_network_trust_only_tokenless_deliveries_pass_and_oidc_needs_its_token(infer, tokens):
    """``network``: a delivery without a token is the data plane's (the NetworkPolicy admits
    only Knative's namespaces); everything else still needs a token. ``oidc``: no token, no
    delivery."""
    client, producer = infer(auth_data_plane="network")
    value = np.ones(64, np.float32).tobytes()
    assert client.post("/", data=value, headers=kafka_event(4)).status_code == 200
    predictor = {**kafka_event(5), **bearer(tokens["predictor"])}
    assert client.post("/", data=value, headers=predictor).status_code == 403
    assert client.get(f"/v1/models/{SPEC['id']}").status_code == 401
    assert len(producer.sent) == 1


# -- the cluster: nothing public, pods reachable only from Knative ------------------------------


def admitted_namespaces(policy: dict) -> set[str]:
    found = set()
    for rule in policy["spec"].get("ingress") or []:
        for peer in rule.get("from") or []:
            labels = (peer.get("namespaceSelector") or {}).get("matchLabels") or {}
            if "kubernetes.io/metadata.name" in labels:
                found.add(labels["kubernetes.io/metadata.name"])
            elif "namespaceSelector" in peer or not peer.get("podSelector"):
                found.add("ANY")  # an empty selector: every namespace
    return found


def test_every_function_is_cluster_local_mounts_the_tokens_and_is_policed():
    docs = build(KNATIVE / "base")
    services = [d for d in docs if d["kind"] == "Service" and "serving" in d["apiVersion"]]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert {s["metadata"]["name"] for s in services} >= {"kml-register", "kml-train", "kml-infer"}
    for service in services:
        name = service["metadata"]["name"]
        assert service["metadata"]["labels"]["networking.knative.dev/visibility"] == (
            "cluster-local"
        ), name
        pod = service["spec"]["template"]["spec"]
        assert {"secretName": "kml-tokens"}.items() <= pod["volumes"][0]["secret"].items(), name
        [policy] = [
            p
            for p in policies
            if p["spec"]["podSelector"]["matchLabels"] == {"serving.knative.dev/service": name}
        ]
        assert admitted_namespaces(policy) <= KNATIVE_NAMESPACES, name
    settings = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert settings["KML_AUTH_TOKENS_FILE"] == "/etc/kml/tokens/tokens.json"
    assert "KML_AUTH" not in settings  # access control is never switched off by the defaults


@pytest.mark.parametrize("mode", ["event", "stream"])
def test_rendered_inference_is_cluster_local_unless_public_and_policed(mode):
    spec = {**SPEC, "mode": mode, "input_topic": "in", "output_topic": "out"}
    docs = render_inference_manifests(spec, Settings(namespace="kml"))
    [policy] = [d for d in docs if d["kind"] == "NetworkPolicy"]
    if mode == "stream":  # takes no requests: admits nobody
        assert policy["spec"]["ingress"] == []
        return
    assert admitted_namespaces(policy) == KNATIVE_NAMESPACES
    service = docs[0]
    assert service["metadata"]["labels"]["networking.knative.dev/visibility"] == "cluster-local"
    public = render_inference_manifests({**spec, "public": True}, Settings(namespace="kml"))[0]
    assert "networking.knative.dev/visibility" not in public["metadata"]["labels"]


# -- the dashboard in a browser: a token signs in, its scopes still hold -------------------------


def test_a_browser_signs_in_with_a_token_kept_in_a_strict_http_only_cookie(tokens):
    pages = Blueprint("pages", __name__)
    pages.get("/runs", endpoint="runs")(lambda: json_response({"runs": []}))
    pages.post("/models", endpoint="models")(lambda: json_response({"created": True}, 201))
    app = function_app(
        Settings(auth_tokens_file=tokens["file"]),
        lambda s: Function("pages", {}, ready=lambda: None, blueprints=[pages], browser_login=True),
    )
    client = app.test_client()
    page = client.get("/runs", headers={"Accept": "text/html"})
    assert page.status_code == 303 and page.headers["Location"] == "/login?next=%2Fruns"
    assert client.get("/login?token=kml_wrong").status_code == 401
    signed = client.get(f"/login?token={tokens['reader']}&next=//evil.example/x")
    assert signed.status_code == 303 and signed.headers["Location"] == "/"  # never off-site
    cookie = signed.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/runs").status_code == 200
    assert client.post("/models").status_code == 403  # a read token's forms are refused


# -- kml deploy inference --apply: what S3 holds is not what kubectl applies -------------------


@pytest.mark.integration
def test_tampered_yaml_in_s3_is_never_applied_and_a_tampered_spec_is_refused(
    stack, unique, tmp_path, monkeypatch
):
    import shutil
    import stat

    import yaml
    from typer.testing import CliRunner

    from kml.cli import app

    registry = Registry.from_settings(stack)
    registry.ensure_ready()
    spec = {
        **{k: v for k, v in SPEC.items() if k != "created"},
        "id": f"tamper-{unique}",
        "input_topic": f"in-{unique}",
        "output_topic": f"out-{unique}",
    }
    registry.create_inference(spec)
    evil = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n"
    registry.put_inference_manifests(spec["id"], evil + "metadata: {name: pwned}\n")

    for k, v in {"s3_endpoint": stack.s3_endpoint, "bucket": stack.bucket}.items():
        monkeypatch.setenv(f"KML_{k.upper()}", v)
    received = tmp_path / "applied.yaml"
    kubectl = tmp_path / "bin" / "kubectl"
    kubectl.parent.mkdir()
    kubectl.write_text(f"#!/bin/sh\n{shutil.which('cat')} > {received}\necho applied\n")
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(kubectl.parent))
    argv = ["deploy", "inference", spec["id"], "--apply", "--state-dir", str(tmp_path / "s")]

    applied = CliRunner().invoke(app, argv)
    assert applied.exit_code == 0, applied.output
    kinds = [d["kind"] for d in yaml.safe_load_all(received.read_text())]
    assert kinds == ["Service", "KafkaSource", "NetworkPolicy"]  # rendered again, checked
    assert "ClusterRoleBinding" not in received.read_text()

    received.unlink()
    stored, _ = registry.store.get_json(f"inference/{spec['id']}.json")
    registry.store.put_json(f"inference/{spec['id']}.json", {**stored, "image": "attacker/miner:1"})
    refused = CliRunner().invoke(app, argv)
    assert refused.exit_code == 1 and "attacker/miner:1" in refused.output
    assert "allowed" in refused.output
    assert not received.exists()  # kubectl never ran


def test_the_off_switch_admits_anyone_and_says_so(capsys):
    pages = Blueprint("open_pages", __name__)
    pages.get("/runs", endpoint="runs")(lambda: json_response([]))
    app = function_app(
        Settings(auth="off"),
        lambda s: Function("pages", {}, ready=lambda: None, blueprints=[pages]),
    )
    assert app.test_client().get("/runs").status_code == 200
    assert "access control is OFF" in capsys.readouterr().err  # in the JSON log
    with pytest.raises(ValueError, match="KML_AUTH"):
        function_app(Settings(auth="maybe"), lambda s: Function("x", {}, ready=lambda: None))
