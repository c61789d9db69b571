"""``kml deploy inference`` (YAML, --apply, --local) and ``kml predict`` against real services."""

from __future__ import annotations

import json
import os
import shutil
import stat

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from kml.cli import app
from kml.dev.inference import start_local_inference, stop_local_inference
from storage.registry import Registry
from tests.functions.infer.conftest import deploy

pytestmark = pytest.mark.integration
runner = CliRunner()


@pytest.fixture
def deployment(stack, digits, tmp_path):
    return deploy(stack, digits, tmp_path / "cache", tflite=True, partitions=1)


def test_local_inference_is_wired_for_the_bridge_and_kml_predict_calls_it(
    stack, digits, deployment
):
    settings = deployment.settings
    url, pid = start_local_inference(settings, deployment.id)
    try:
        state = settings.state_dir
        again = runner.invoke(
            app, ["deploy", "inference", deployment.id, "--local", "--state-dir", state]
        )
        assert again.exit_code == 0, again.output
        assert f"{url} (pid {pid})" in again.output  # already running: found, not restarted
        with open(os.path.join(state, "services", f"kml-infer-{deployment.id}.json")) as f:
            assert json.load(f) == {"url": url}
        with open(os.path.join(state, "sources", f"infer-{deployment.id}.yaml")) as f:
            (source,) = list(yaml.safe_load_all(f))
        assert source["kind"] == "KafkaSource"
        assert source["spec"]["topics"] == [deployment.spec["input_topic"]]
        assert source["spec"]["sink"]["ref"]["name"] == f"kml-infer-{deployment.id}"

        result = runner.invoke(
            app,
            [
                "predict",
                deployment.id,
                "--state-dir",
                state,
                "--instances",
                json.dumps(digits.inputs[:3].tolist()),
            ],
        )
        assert result.exit_code == 0, result.output
        predictions = json.loads(result.output)["predictions"]
        np.testing.assert_allclose(predictions, digits.keras_predictions[:3], atol=1e-5)

        as_event = runner.invoke(
            app,
            [
                "predict",
                deployment.id,
                "--url",
                url,
                "--state-dir",  # whose token to send: the local stack's owner's
                state,
                "--event",
                "--instances",
                json.dumps(digits.inputs[:2].tolist()),
            ],
        )
        assert as_event.exit_code == 0, as_event.output
        assert len(json.loads(as_event.output)["predictions"]) == 2

        bad = runner.invoke(
            app,
            [
                "predict",
                deployment.id,
                "--url",
                url,
                "--state-dir",
                state,
                "--instances",
                "[[1, 2, 3]]",
            ],
        )
        assert bad.exit_code == 1 and "[3]" in bad.output
    finally:
        assert stop_local_inference(settings, deployment.id)
    assert not os.path.exists(
        os.path.join(settings.state_dir, "sources", f"infer-{deployment.id}.yaml")
    )


def test_deploy_prints_the_manifests_and_applies_them_with_kubectl(
    stack, deployment, tmp_path, monkeypatch
):
    env = {
        f"KML_{k.upper()}": v
        for k, v in {
            "s3_endpoint": stack.s3_endpoint,
            "bucket": stack.bucket,
            "kafka_bootstrap": stack.kafka_bootstrap,
        }.items()
    }
    cat = shutil.which("cat")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    state = str(tmp_path / "state")
    printed = runner.invoke(app, ["deploy", "inference", deployment.id, "--state-dir", state])
    assert printed.exit_code == 0, printed.output
    kinds = [d["kind"] for d in yaml.safe_load_all(printed.output)]
    assert kinds == ["Service", "KafkaSource", "NetworkPolicy"]  # rendered from the spec
    stored = printed.output.replace("namespace: default", "namespace: stored-by-register")
    Registry.from_settings(stack).put_inference_manifests(deployment.id, stored)
    again = runner.invoke(app, ["deploy", "inference", deployment.id, "--state-dir", state])
    # the YAML stored in S3 is never used: the spec is rendered again with these settings
    assert again.exit_code == 0 and again.output == printed.output

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    missing = runner.invoke(
        app, ["deploy", "inference", deployment.id, "--apply", "--state-dir", state]
    )
    assert missing.exit_code == 1 and "kubectl is not on PATH" in missing.output

    received = tmp_path / "applied.yaml"
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(f'#!/bin/sh\n{cat} > {received}\necho applied "$@"\n')
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IEXEC)
    applied = runner.invoke(
        app, ["deploy", "inference", deployment.id, "--apply", "--state-dir", state]
    )
    assert applied.exit_code == 0, applied.output
    assert "applied apply -f -" in applied.output
    assert received.read_text() == printed.output


def test_inference_create_makes_the_topics_when_kafka_answers_and_says_so_when_not(
    stack, digits, tmp_path
):
    from kafkaml.kafka import end_offsets
    from kafkaml.manifests import TOPIC_PARTITIONS
    from kml.commands.inference import create_topics_if_reachable
    from kml.dev.procs import free_port

    deployment = deploy(stack, digits, tmp_path / "cache", tflite=True, create_topics=False)
    spec = deployment.spec
    nowhere = deployment.settings.replace(kafka_bootstrap=f"127.0.0.1:{free_port()}")
    note = create_topics_if_reachable(nowhere, spec, timeout_s=2)
    assert note.startswith("topics not created now") and "kml deploy inference" in note
    assert end_offsets(stack.kafka_bootstrap, spec["input_topic"]) == {}
    note = create_topics_if_reachable(deployment.settings, spec)
    assert note.startswith("topics ready") and spec["input_topic"] in note
    for topic in (spec["input_topic"], spec["output_topic"], deployment.settings.dlq_topic):
        assert len(end_offsets(stack.kafka_bootstrap, topic)) == TOPIC_PARTITIONS
