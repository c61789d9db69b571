"""Configurations, deployments, the read API and the HTTP error contract, over the real MinIO."""

from __future__ import annotations

import json

import pytest

from functions.register.app import create_app
from kafkaml.events import (
    CONFIGURATION_CREATE,
    CONFIGURATION_CREATED,
    DEPLOYMENT_CREATE,
    DEPLOYMENT_CREATED,
    MODEL_REGISTER,
)
from kml.dev.procs import free_port
from storage.registry import Registry
from tests.functions.register.conftest import answer, model_event

pytestmark = pytest.mark.integration


@pytest.fixture
def two_models(send_binary, model_json, unique) -> list[str]:
    names = [f"a-{unique}", f"b-{unique}"]
    for name in names:
        assert send_binary(MODEL_REGISTER, model_event(name, model_json)).status_code == 201
    return names


def test_configuration_created_and_read(send, client, two_models, unique):
    a, b = two_models
    r = send(CONFIGURATION_CREATE, {"name": f"c-{unique}", "models": [a, f"{b}@1"]})
    assert r.status_code == 201, r.data
    ce_type, record = answer(r)
    assert ce_type == CONFIGURATION_CREATED and record["models"] == [f"{a}@1", f"{b}@1"]
    assert client.get(f"/configurations/c-{unique}").get_json()["requested"] == [a, f"{b}@1"]
    assert f"c-{unique}" in {c["name"] for c in client.get("/configurations").get_json()}
    assert send(CONFIGURATION_CREATE, {"name": f"c-{unique}", "models": [a]}).status_code == 409


def test_configuration_with_unknown_models_is_422(send_binary, two_models, unique):
    r = send_binary(
        CONFIGURATION_CREATE, {"name": f"c-{unique}", "models": [two_models[0], "ghost", "ghost@2"]}
    )
    assert r.status_code == 422
    assert r.get_json()["problems"] == ["models: no model 'ghost'", "models: no model 'ghost@2'"]
    r = send_binary(CONFIGURATION_CREATE, {"name": f"c-{unique}", "models": ["x@y", "ok", 3]})
    assert r.status_code == 422
    assert [p.split(":")[0] for p in r.get_json()["problems"]] == ["models[0]", "models[2]"]


def test_deployment_with_chosen_and_generated_ids(send, client, two_models, unique):
    send(CONFIGURATION_CREATE, {"name": f"c-{unique}", "models": two_models})
    chosen = f"7{unique}"
    r = send(
        DEPLOYMENT_CREATE,
        {
            "id": chosen,
            "configuration": f"c-{unique}",
            "batch_size": 16,
            "epochs": 2,
            "shuffle": False,
            "seed": 3,
            "learning_rate": 0.01,
            "fit_kwargs": {"validation_freq": 1},
        },
    )
    assert r.status_code == 201, r.data
    ce_type, record = answer(r)
    assert ce_type == DEPLOYMENT_CREATED and record["id"] == chosen
    assert record["models"] == [f"{m}@1" for m in two_models]
    shown = client.get(f"/deployments/{chosen}").get_json()
    assert (shown["batch_size"], shown["epochs"], shown["seed"]) == (16, 2, 3)
    generated = answer(send(DEPLOYMENT_CREATE, {"models": [two_models[0]]}))[1]
    assert generated["id"].isdigit() and generated["epochs"] == 1
    assert {chosen, generated["id"]} <= {d["id"] for d in client.get("/deployments").get_json()}
    assert send(DEPLOYMENT_CREATE, {"id": chosen, "models": two_models}).status_code == 409


def test_deployment_parameters_all_reported(send_binary, two_models):
    r = send_binary(
        DEPLOYMENT_CREATE,
        {
            "models": two_models,
            "batch_size": 0,
            "epochs": "ten",
            "shuffle": "yes",
            "learning_rate": -1,
            "fit_kwargs": {"callbacks": "x", "steps_per_epoch": 0},
            "evaluate_kwargs": {"verbose": 2},
            "id": "a/b",
        },
    )
    assert r.status_code == 422
    fields = {p.split(":")[0] for p in r.get_json()["problems"]}
    assert fields == {
        "batch_size",
        "epochs",
        "shuffle",
        "learning_rate",
        "fit_kwargs.callbacks",
        "fit_kwargs.steps_per_epoch",
        "evaluate_kwargs.verbose",
        "id",
    }


def test_deployment_of_unknown_configuration_is_422(send_binary, unique):
    r = send_binary(DEPLOYMENT_CREATE, {"configuration": f"ghost-{unique}"})
    assert r.status_code == 422 and "ghost" in r.get_json()["problems"][0]


def test_runs_and_datasources_readable(client, registry, unique):
    registry.claim_run(f"run-{unique}", {"deployment_id": "1", "datasource_id": f"ds-{unique}"})
    registry.put_datasource(f"ds-{unique}", {"control_message": {"topic": "t:0:0:5"}})
    assert client.get(f"/runs/run-{unique}").get_json()["status"] == "claimed"
    assert client.get(f"/runs/nope-{unique}").status_code == 404
    assert f"ds-{unique}" in {d["id"] for d in client.get("/datasources").get_json()}
    assert client.get(f"/deployments/nope-{unique}").status_code == 404


# -- the error contract -------------------------------------------------------------------------
def test_missing_type_is_400_naming_it(client):
    r = client.post(
        "/",
        headers={
            "ce-specversion": "1.0",
            "ce-id": "1",
            "ce-source": "/t",
            "content-type": "application/json",
        },
        data=b"{}",
    )
    assert r.status_code == 400 and "ce-type" in r.get_json()["error"]
    body = json.dumps({"specversion": "1.0", "id": "1", "source": "/t", "data": {}})
    r = client.post("/", headers={"content-type": "application/cloudevents+json"}, data=body)
    assert r.status_code == 400 and "type" in r.get_json()["error"]


def test_unknown_type_is_400_naming_it(send):
    r = send("kml.model.delete", {"name": "x"})
    assert r.status_code == 400 and "kml.model.delete" in r.get_json()["error"]


def test_invalid_json_is_400(client):
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "1",
        "ce-source": "/t",
        "ce-type": CONFIGURATION_CREATE,
        "content-type": "application/json",
    }
    r = client.post("/", headers=headers, data=b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.get_json()["error"]
    r = client.post(
        "/",
        headers={"content-type": "application/cloudevents+json"},
        data=b'{"specversion": "1.0", "type": ',
    )
    assert r.status_code == 400


def test_not_a_cloudevent_is_400(client):
    r = client.post("/", json={"name": "x"})
    assert r.status_code == 400 and "binary mode" in r.get_json()["error"]


def test_body_over_limit_is_413(send_binary, app_settings):
    big = {"name": "big", "keras_json": "x" * (app_settings.max_body_bytes + 1)}
    r = send_binary(MODEL_REGISTER, big)
    assert r.status_code == 413 and "limit" in r.get_json()["error"]


def test_data_not_an_object_is_422(client):
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "1",
        "ce-source": "/t",
        "ce-type": CONFIGURATION_CREATE,
        "content-type": "application/json",
    }
    r = client.post("/", headers=headers, data=b'["a", "b"]')
    assert r.status_code == 422 and "expected an object" in r.get_json()["problems"][0]


def test_storage_unreachable_is_503(app_settings):
    dead = app_settings.replace(s3_endpoint=f"http://127.0.0.1:{free_port()}")
    client = create_app(dead, Registry.from_settings(dead)).test_client()
    assert client.get("/health/liveness").status_code == 200
    ready = client.get("/health/readiness")
    assert ready.status_code == 503 and "secret" not in ready.get_data(as_text=True)
    assert client.get("/models").status_code == 503
    from tests.functions.register.conftest import Sender

    r = Sender(client)(CONFIGURATION_CREATE, {"name": "c", "models": ["a"]})
    assert r.status_code == 503 and "Traceback" not in r.get_data(as_text=True)


def test_readiness_when_storage_answers(client):
    assert client.get("/health/readiness").status_code == 200


def test_redelivered_event_gets_the_first_answer(client, model_json, unique):
    """KafkaSource delivers at least once: the same (source, id) must not add a version."""
    from kafkaml.events import Event, to_http

    event = Event(
        type=MODEL_REGISTER,
        source="/apis/v1/namespaces/kml/kafkasources/kml-models",
        id=f"partition:0/offset:{unique}",
        data=model_event(f"r-{unique}", model_json),
    )
    headers, body = to_http(event)
    first = client.post("/", headers=headers, data=body)
    again = client.post("/", headers=headers, data=body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert answer(first)[1] == answer(again)[1]
    assert [
        m["versions"] for m in client.get("/models").get_json() if m["name"] == f"r-{unique}"
    ] == [[1]]
    other = Event(
        type=MODEL_REGISTER,
        source=event.source,
        id=f"partition:0/offset:x{unique}",
        data=event.data,
    )
    headers, body = to_http(other)
    assert answer(client.post("/", headers=headers, data=body))[1]["version"] == 2
