"""``auth_data_plane=oidc``: a KafkaSource delivery is admitted only with Knative Eventing's
sender token, a JWT the cluster's issuer signed for the functions' audience. The keys and
signatures are made by ``openssl``, as the cluster's issuer would make them."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from functions.infer.app import create_app as infer_app
from kafkaml.manifests import render_inference_manifests
from kafkaml.settings import Settings
from tests.access import SESSION_AUTH
from tests.functions.infer.fakes import SPEC, LinearModel, RecordingProducer, fixed_loader

ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "kafka-ml"
SUBJECT = "system:serviceaccount:kml:kml-infer-digits-1-oidc-source"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    """An RSA key pair in ``home``; signs JWTs like a service account issuer."""

    def __init__(self, home: Path, kid: str) -> None:
        self.key, self.kid = home / f"{kid}.pem", kid
        subprocess.run(["openssl", "genrsa", "-out", str(self.key), "2048"], check=True,
                       capture_output=True)  # fmt: skip
        text = subprocess.run(
            ["openssl", "rsa", "-in", str(self.key), "-noout", "-modulus"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        modulus = bytes.fromhex(re.search(r"Modulus=([0-9A-F]+)", text).group(1))
        self.jwk = {"kty": "RSA", "kid": kid, "n": b64(modulus), "e": b64((65537).to_bytes(3))}

    def sign(self, claims: dict, alg: str = "RS256") -> str:
        head = b64(json.dumps({"alg": alg, "kid": self.kid}).encode())
        body = b64(json.dumps(claims).encode())
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=f"{head}.{body}".encode(), check=True, capture_output=True,
        ).stdout  # fmt: skip
        return f"{head}.{body}.{b64(signature)}"


@pytest.fixture(scope="module")
def issuers(tmp_path_factory):
    home = tmp_path_factory.mktemp("oidc")
    cluster, other = Issuer(home, "cluster"), Issuer(home, "other")
    jwks = home / "jwks.json"
    jwks.write_text(json.dumps({"keys": [cluster.jwk]}))
    return cluster, other, str(jwks)


def claims(**changes) -> dict:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "aud": [AUDIENCE],
        "sub": SUBJECT,
        "iat": now,
        "exp": now + 600,
        **changes,
    }


@pytest.fixture
def client(issuers):
    settings = Settings(
        inference_id=SPEC["id"],
        dlq_topic="dlq",
        namespace="kml",
        auth_data_plane="oidc",
        auth_oidc_issuer=ISSUER,
        auth_oidc_audience=AUDIENCE,
        auth_oidc_jwks_file=issuers[2],
        **{**SESSION_AUTH, "auth_token": ""},
    )
    producer = RecordingProducer()
    app = infer_app(
        settings, loader=fixed_loader(LinearModel()), producer_factory=lambda s: producer
    )
    assert app.extensions["kml.infer"].wait_ready(5)
    yield app.test_client(), producer
    app.extensions["kml.infer"].close()


def deliver(client, offset: int, token: str | None):
    headers = {
        "ce-specversion": "1.0",
        "ce-type": "dev.knative.kafka.event",
        "ce-id": f"partition:0/offset:{offset}",
        "ce-source": f"/apis/v1/namespaces/kml/kafkasources/kml-infer-{SPEC['id']}#in",
        "ce-key": base64.b64encode(b"k").decode(),
    }
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return client.post("/", data=np.ones(64, np.float32).tobytes(), headers=headers)


def test_only_the_issuers_token_for_our_audience_delivers(client, issuers):
    web, producer = client
    cluster, other, _ = issuers
    assert deliver(web, 1, cluster.sign(claims())).status_code == 200
    refused = {
        "no token": None,
        "another key": other.sign(claims()),
        "another audience": cluster.sign(claims(aud="someone-else")),
        "another issuer": cluster.sign(claims(iss="https://evil.example")),
        "expired": cluster.sign(claims(exp=int(time.time()) - 3600)),
        "another namespace": cluster.sign(claims(sub="system:serviceaccount:default:x")),
        "unsigned": cluster.sign(claims()).rsplit(".", 1)[0] + ".",
        "alg none": b64(b'{"alg":"none"}') + "." + b64(json.dumps(claims()).encode()) + ".",
    }
    for offset, (what, token) in enumerate(refused.items(), start=2):
        answer = deliver(web, offset, token)
        assert answer.status_code == 401, what
    # An opaque token the operator gave the deliver scope (a relay of their own) still counts.
    assert deliver(web, 20, SESSION_AUTH["auth_token"]).status_code == 200
    assert len(producer.on(SPEC["output_topic"])) == 2


def test_rendered_sources_ask_knative_for_our_audience():
    spec = {**SPEC, "input_topic": "in", "output_topic": "out"}
    oidc = Settings(auth_data_plane="oidc", auth_oidc_audience=AUDIENCE)
    source = render_inference_manifests(spec, oidc)[1]
    assert source["spec"]["sink"]["audience"] == AUDIENCE
    plain = render_inference_manifests(spec, Settings())[1]
    assert "audience" not in plain["spec"]["sink"]
