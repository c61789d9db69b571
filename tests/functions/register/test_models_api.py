"""Registering models through the app against the real MinIO: both content modes, every refusal."""

from __future__ import annotations

import json
import threading

import pytest

from kafkaml.events import MODEL_REGISTER, MODEL_REGISTERED
from tests.functions.register.conftest import COMPILE, Sender, answer, model_event

pytestmark = pytest.mark.integration


def test_register_answers_registered_event_with_summary(send, client, model_json, unique):
    r = send(MODEL_REGISTER, model_event(f"m-{unique}", model_json, description="tiny"))
    assert r.status_code == 201, r.data
    ce_type, record = answer(r)
    assert ce_type == MODEL_REGISTERED
    assert (record["name"], record["version"]) == (f"m-{unique}", 1)
    assert record["param_count"] == 4 * 3 + 3 + 3 * 2 + 2
    assert record["input_shape"] == [None, 4] and record["output_shape"] == [None, 2]
    assert record["compile"] == COMPILE and record["schema_version"] == 1
    shown = client.get(f"/models/m-{unique}/1").get_json()
    assert shown["keras_json"] and shown["description"] == "tiny"


def test_versions_and_read_api(send_binary, client, model_json, unique):
    name = f"m-{unique}"
    for _ in range(2):
        assert send_binary(MODEL_REGISTER, model_event(name, model_json)).status_code == 201
    assert client.get(f"/models/{name}").get_json()["version"] == 2
    assert client.get(f"/models/{name}/1").get_json()["version"] == 1
    listed = {m["name"]: m for m in client.get("/models").get_json()}
    assert listed[name]["versions"] == [1, 2]
    assert client.get(f"/models/{name}/9").status_code == 404
    assert client.get(f"/models/nope-{unique}").status_code == 404
    assert client.get(f"/models/{name}/one").status_code == 422


def test_existing_version_is_409_naming_it(send_binary, model_json, unique):
    event = model_event(f"m-{unique}", model_json, version=4)
    assert send_binary(MODEL_REGISTER, event).status_code == 201
    r = send_binary(MODEL_REGISTER, event)
    assert r.status_code == 409
    assert f"m-{unique} version 4" in r.get_json()["error"]


def test_concurrent_same_version_one_wins_other_409(app_settings, registry, model_json, unique):
    from functions.register.app import create_app

    app = create_app(app_settings, registry)
    event = model_event(f"m-{unique}", model_json, version=1)
    statuses: list[int] = []
    barrier = threading.Barrier(2)

    def register() -> None:
        sender = Sender(app.test_client())
        barrier.wait()
        statuses.append(sender(MODEL_REGISTER, event).status_code)

    threads = [threading.Thread(target=register) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [201, 409]
    assert registry.list_model_versions(f"m-{unique}") == [1]


def test_lambda_layer_refused_with_reason(send_binary, keras_call, unique):
    r = send_binary(MODEL_REGISTER, model_event(f"m-{unique}", keras_call("lambda_model_json")))
    assert r.status_code == 422
    assert any("Lambda layer refused" in p for p in r.get_json()["problems"])


def test_custom_object_refused_naming_it(send_binary, keras_call, unique):
    r = send_binary(MODEL_REGISTER, model_event(f"m-{unique}", keras_call("custom_layer_json")))
    assert r.status_code == 422
    assert any("mypackage.layers.MyDense" in p for p in r.get_json()["problems"])


def test_model_without_input_shape_refused(send_binary, model_json, unique):
    config = json.loads(model_json)
    config["config"]["layers"] = config["config"]["layers"][1:]  # drop the InputLayer
    config["config"].pop("build_input_shape", None)
    config.pop("build_config", None)
    r = send_binary(MODEL_REGISTER, model_event(f"m-{unique}", json.dumps(config)))
    assert r.status_code == 422
    assert "input shape" in " ".join(r.get_json()["problems"])


def test_bad_compile_spec_lists_each_problem(send_binary, model_json, unique):
    spec = {"optimizer": "warp-drive", "loss": "nope", "metrics": ["accuracy", "acc-nope"]}
    r = send_binary(
        MODEL_REGISTER, {"name": f"m-{unique}", "keras_json": model_json, "compile": spec}
    )
    assert r.status_code == 422
    problems = r.get_json()["problems"]
    assert [p.split(":")[0] for p in problems] == [
        "compile.optimizer",
        "compile.loss",
        "compile.metrics[1]",
    ]


def test_schema_violations_listed_at_once(send_binary, unique):
    r = send_binary(
        MODEL_REGISTER,
        {"name": "../etc", "version": 0, "bogus": True, "compile": {"optimizer": "adam"}},
    )
    assert r.status_code == 422
    fields = {p.split(":")[0] for p in r.get_json()["problems"]}
    assert fields == {"name", "version", "bogus", "keras_json / keras_b64", "compile.loss"}


def test_keras_file_with_its_own_compile_config(send_binary, client, keras_call, unique):
    r = send_binary(
        MODEL_REGISTER, {"name": f"f-{unique}", "keras_b64": keras_call("tiny_keras_b64", True)}
    )
    assert r.status_code == 201, r.data
    record = answer(r)[1]
    assert record["format"] == "keras_file" and record["compile"]["loss"]
    assert record["param_count"] == 23
    stored = client.get(f"/models/f-{unique}").get_json()["keras_file"]
    assert stored.startswith(f"models/f-{unique}/")


def test_keras_file_without_compile_spec_refused(send_binary, keras_call, unique):
    r = send_binary(
        MODEL_REGISTER, {"name": f"f-{unique}", "keras_b64": keras_call("tiny_keras_b64", False)}
    )
    assert r.status_code == 422
    assert any(p.startswith("compile: required") for p in r.get_json()["problems"])
    r = send_binary(MODEL_REGISTER, {"name": f"f-{unique}", "keras_b64": "not base64!"})
    assert r.status_code == 422 and "Base64" in r.get_json()["problems"][0]
