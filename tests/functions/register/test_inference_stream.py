"""``kml.inference.create`` naming a stream instead of a run: the checks (pure), and over the
real MinIO the spec stored with the stream's promoted run and its input, and each refusal."""

from __future__ import annotations

import pytest

from kafkaml.events import INFERENCE_CREATE
from kml.commands.inference import manifests_yaml
from storage.specs import InferenceSpec
from tests.functions.register.conftest import answer
from tests.functions.register.test_cli import register_url, run_kml  # noqa: F401 - fixtures

CONTROL = {
    "topic": "live",
    "input_format": "RAW",
    "input_config": {
        "data_type": "uint8",
        "label_type": "uint8",
        "data_reshape": "8 8",
        "label_reshape": "1",
    },
    "incremental": True,
}
EVENT = {"input_topic": "in", "output_topic": "out"}


def test_a_spec_names_a_run_or_a_stream_exactly_once():
    assert InferenceSpec.problems({**EVENT, "stream": "s-1"}) == []
    assert InferenceSpec.problems({**EVENT, "run_id": "run-1"}) == []
    both = InferenceSpec.problems({**EVENT, "run_id": "run-1", "stream": "s-1"})
    assert both == [
        "run_id / stream: give one, not both (a stream's deployment serves the run its pointer "
        "promoted)"
    ]
    neither = InferenceSpec.problems(EVENT)
    assert neither == ["run_id / stream: one is required (a run to pin, or a stream to follow)"]
    [bad] = InferenceSpec.problems({**EVENT, "stream": "../x"})
    assert bad.startswith("stream: '../x' must be")
    stored = InferenceSpec.from_dict(
        {
            **EVENT,
            "run_id": "run-1",
            "model": "m",
            "stream": "s-1",
            "input_format": "RAW",
            "input_config": {},
        }
    )
    assert stored.stream == "s-1" and stored.to_dict()["stream"] == "s-1"
    pinned = InferenceSpec.from_dict(
        {**EVENT, "run_id": "run-1", "model": "m", "input_format": "RAW", "input_config": {}}
    )
    assert "stream" not in pinned.to_dict()  # a pinned run's record is as before
    # stored, a stream's spec holds the run promoted at creation too: not "both"
    assert InferenceSpec.stored_problems({**EVENT, "run_id": "run-1", "stream": "s-1"}) == []
    # a stream that had promoted nothing when the spec was created: no run yet
    assert InferenceSpec.stored_problems({**EVENT, "run_id": None, "stream": "s-1"}) == []
    [bad] = InferenceSpec.stored_problems({**EVENT, "run_id": "../x", "stream": "s-1"})
    assert bad.startswith("run_id: '../x' must be")


def _window_run(registry, run_id: str) -> None:
    """A succeeded window run as train leaves it (no datasource: its input is the stream's)."""
    registry.claim_run(run_id, {"deployment_id": "9", "stream_id": "s", "mode": "online"})
    _, etag = registry.get_run(run_id)
    _, etag = registry.update_run(run_id, etag, status="running")
    key = registry.run_artifact_key(run_id, "digits", "model.keras")
    registry.update_run(
        run_id, etag, status="succeeded", models={"digits": {"artifacts": {"model.keras": key}}}
    )


def _stream(registry, stream_id: str, promoted_run: str | None) -> None:
    registry.create_stream(
        stream_id,
        {
            "topic": "live",
            "status": "open",
            "model": "digits@1",
            "control_message": CONTROL,
            "windows": [],
        },
    )
    if promoted_run:
        _, etag = registry.get_stream(stream_id)
        pointer = {"model": f"digits-{stream_id}@1", "run_id": promoted_run, "window": 0}
        registry.update_stream(stream_id, etag, promoted=pointer, promotions=1)


@pytest.mark.integration
def test_a_stream_spec_stores_the_promoted_run_and_the_streams_input(
    send_binary, registry, unique, app_settings
):
    _window_run(registry, f"run-w-{unique}")
    _stream(registry, f"s-{unique}", f"run-w-{unique}")
    r = send_binary(INFERENCE_CREATE, {**EVENT, "stream": f"s-{unique}", "id": f"f-{unique}"})
    assert r.status_code == 201, r.data
    record = answer(r)[1]
    assert (record["stream"], record["run_id"], record["model"]) == (
        f"s-{unique}",
        f"run-w-{unique}",
        "digits",
    )
    assert record["input_format"] == "RAW" and record["input_config"] == CONTROL["input_config"]
    assert registry.get_inference(f"f-{unique}")["stream"] == f"s-{unique}"
    # kml deploy inference renders the stored spec again, checked as register checks it
    yaml_text = manifests_yaml(app_settings, f"f-{unique}")
    assert f"kml-infer-f-{unique}" in yaml_text


@pytest.mark.integration
def test_unknown_stream_422_nothing_promoted_yet_201_both_422(send_binary, registry, unique):
    r = send_binary(INFERENCE_CREATE, {**EVENT, "stream": f"nope-{unique}"})
    assert r.status_code == 422
    assert r.get_json()["problems"] == [f"stream: no stream 'nope-{unique}' (kml streams list)"]
    _stream(registry, f"new-{unique}", None)
    wrong = send_binary(INFERENCE_CREATE, {**EVENT, "stream": f"new-{unique}", "model": "other"})
    assert wrong.status_code == 422
    assert wrong.get_json()["problems"] == ["model: the stream trains 'digits', not 'other'"]
    r = send_binary(INFERENCE_CREATE, {**EVENT, "stream": f"new-{unique}", "id": f"n-{unique}"})
    assert r.status_code == 201, r.data  # served once the stream promotes its first model
    record = answer(r)[1]
    assert (record["stream"], record["run_id"], record["model"]) == (
        f"new-{unique}",
        None,
        "digits",
    )
    assert record["input_config"] == CONTROL["input_config"]
    r = send_binary(INFERENCE_CREATE, {**EVENT, "stream": f"new-{unique}", "run_id": "run-1"})
    assert r.status_code == 422 and "give one, not both" in r.get_json()["problems"][0]
    r = send_binary(INFERENCE_CREATE, EVENT)
    assert r.status_code == 422 and "one is required" in r.get_json()["problems"][0]


@pytest.mark.integration
def test_kml_inference_create_stream(registry, unique, run_kml, stack, monkeypatch):  # noqa: F811
    monkeypatch.setenv("KML_KAFKA_BOOTSTRAP", stack.kafka_bootstrap)  # it makes the topics
    _window_run(registry, f"run-c-{unique}")
    _stream(registry, f"c-{unique}", f"run-c-{unique}")
    args = ["inference", "create", "--input-topic", f"in-{unique}", "--output-topic", "o"]
    done = run_kml(*args, "--stream", f"c-{unique}", "--id", f"c-{unique}")
    assert done.exit_code == 0, done.output
    assert f"following stream c-{unique}" in done.output
    assert registry.get_inference(f"c-{unique}")["run_id"] == f"run-c-{unique}"
    refused = run_kml(*args, "--stream", f"c-{unique}", "--run", "run-x")
    assert refused.exit_code != 0 and "give one, not both" in refused.output
