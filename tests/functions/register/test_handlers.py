"""Register's handler over an in-memory store: what each event stores and answers, no MinIO."""

from __future__ import annotations

import threading
import time

import pytest

from functions.register import handlers
from functions.register.app import create_app
from kafkaml import events
from kafkaml.errors import Conflict, InvalidEvent, Unavailable, ValidationFailed, is_retried
from kafkaml.events import Event, new_event, to_http
from kafkaml.settings import Settings
from storage.registry import Registry
from tests.access import SESSION_AUTH
from tests.fakes import MemoryStore, tiny_model_json
from tests.functions.register.conftest import model_event

SETTINGS = Settings(bucket="unit", namespace="kml", **SESSION_AUTH)
MODEL = model_event("m", tiny_model_json())
"""A 4 -> 3 -> 2 classifier (23 parameters), validated by the real validator child."""
REGISTER_TYPES = [
    events.MODEL_REGISTER,
    events.CONFIGURATION_CREATE,
    events.DEPLOYMENT_CREATE,
    events.INFERENCE_CREATE,
    events.STREAM_STOP,
]


@pytest.fixture
def registry() -> Registry:
    return Registry(MemoryStore("unit"))


def handle(registry: Registry, type_: str, data, event_id: str | None = None):
    event = new_event(type_, "/tests/handlers", data)
    if event_id is not None:
        event = Event(type_, event.source, event_id, data)
    reply, status = handlers.handle_event(registry, SETTINGS, event)
    return status, reply.type, reply.data


def stored_model(registry: Registry, name: str = "m") -> dict:
    """A model already in the registry (put there without the validator: quick)."""
    definition = {"format": "keras_json", "keras_json": MODEL["keras_json"]}
    return registry.register_model(name, {**definition, "compile": MODEL["compile"]})


def test_a_model_is_validated_stored_and_a_redelivery_gets_the_first_answer(registry):
    first = handle(registry, events.MODEL_REGISTER, MODEL, event_id="partition:0/offset:7")
    status, answer_type, record = first
    assert (status, answer_type) == (201, events.MODEL_REGISTERED)
    assert (record["name"], record["version"], record["param_count"]) == ("m", 1, 23)
    assert record["input_shape"] == [None, 4] and record["output_shape"] == [None, 2]
    assert registry.get_model("m") == record
    again = handle(registry, events.MODEL_REGISTER, MODEL, event_id="partition:0/offset:7")
    assert again == (200, events.MODEL_REGISTERED, record)
    assert registry.list_model_versions("m") == [1]  # the redelivery stored no second version


def test_configuration_and_deployment_pin_the_model_versions(registry):
    stored_model(registry)
    stored_model(registry)
    config_event = {"name": "c", "models": ["m", "m@1"]}
    status, answer_type, config = handle(
        registry, events.CONFIGURATION_CREATE, config_event, event_id="e1"
    )
    assert (status, answer_type) == (201, events.CONFIGURATION_CREATED)
    assert config["models"] == ["m@2", "m@1"]
    assert handle(registry, events.CONFIGURATION_CREATE, config_event, event_id="e1")[0] == 200
    with pytest.raises(Conflict, match="configuration 'c' already exists"):
        handle(registry, events.CONFIGURATION_CREATE, config_event, event_id="e2")
    status, answer_type, deployment = handle(
        registry, events.DEPLOYMENT_CREATE, {"configuration": "c", "epochs": 2}
    )
    assert (status, answer_type) == (201, events.DEPLOYMENT_CREATED)
    assert (deployment["id"], deployment["models"]) == ("1", ["m@2", "m@1"])
    assert (deployment["epochs"], deployment["batch_size"]) == (2, 32)
    with pytest.raises(ValidationFailed) as unknown:
        handle(registry, events.DEPLOYMENT_CREATE, {"configuration": "ghost"})
    assert unknown.value.problems == ["configuration: no configuration 'ghost'"]


def test_inference_waits_for_a_running_run_and_renders_for_a_succeeded_one(registry):
    store = registry.store
    registry.put_datasource(
        "ds", {"control_message": {"input_format": "RAW", "input_config": {"data_type": "float32"}}}
    )
    _, etag = registry.get_run(registry.claim_run("run-1", {"datasource_id": "ds"})[0]["run_id"])
    _, etag = registry.update_run("run-1", etag, status="running")
    spec = {"id": "digits", "run_id": "run-1", "input_topic": "in", "output_topic": "out"}
    with pytest.raises(Conflict, match="run-1 is running"):
        handle(registry, events.INFERENCE_CREATE, spec)
    key = registry.run_artifact_key("run-1", "m", "model.keras")
    store.put(key, b"keras")
    registry.update_run(
        "run-1", etag, status="succeeded", models={"m": {"artifacts": {"model.keras": key}}}
    )
    status, answer_type, record = handle(registry, events.INFERENCE_CREATE, spec)
    assert (status, answer_type) == (201, events.INFERENCE_CREATED)
    assert (record["model"], record["input_format"]) == ("m", "RAW")
    assert "kind: Service" in store.get("inference/digits.yaml").body.decode()


def test_an_unknown_event_type_is_one_400_naming_the_accepted_types(registry):
    with pytest.raises(InvalidEvent) as raised:
        handle(registry, "kml.model.delete", {"name": "x"})
    client = create_app(SETTINGS, registry).test_client()
    headers, body = to_http(new_event("kml.model.delete", "/tests", {"name": "x"}))
    r = client.post("/", headers=headers, data=body)
    assert r.status_code == 400
    assert r.get_json() == raised.value.to_dict()
    assert r.get_json()["kind"] == "invalid_event"
    assert r.get_json()["accepted"] == REGISTER_TYPES
    assert "kml.model.delete" in r.get_json()["error"]
    assert all(t in r.get_json()["error"] for t in REGISTER_TYPES)


def test_read_api_and_readiness_over_the_app(registry):
    stored_model(registry)
    client = create_app(SETTINGS, registry).test_client()
    headers, body = to_http(
        new_event(events.CONFIGURATION_CREATE, "/t", {"name": "c", "models": ["m"]})
    )
    reply = client.post("/", headers=headers, data=body)
    assert reply.status_code == 201 and reply.headers["ce-type"] == events.CONFIGURATION_CREATED
    assert client.get("/configurations/c").get_json()["models"] == ["m@1"]
    assert client.get("/models/m/1").get_json()["keras_json"] == MODEL["keras_json"]
    assert [m["versions"] for m in client.get("/models").get_json()] == [[1]]
    assert client.get("/models/m/one").status_code == 422
    assert client.get("/runs/nope").get_json()["kind"] == "not_found"
    assert client.get("/health/readiness").status_code == 200
    registry.store.down = True
    ready = client.get("/health/readiness")
    assert ready.status_code == 503 and ready.get_json()["kind"] == "unavailable"
    assert client.get("/health/liveness").status_code == 200  # storage down: not a restart


def test_two_concurrent_deliveries_of_one_model_event_store_one_version(registry):
    """The second delivery arrives while the first is still validating: it waits for and
    returns the first answer instead of registering a second version."""
    event = Event(events.MODEL_REGISTER, "/tests/handlers", "partition:0/offset:9", MODEL)
    barrier, replies = threading.Barrier(2), []
    patient = SETTINGS.replace(register_event_wait_s=240)  # a cold validator child on 2 cores

    def deliver() -> None:
        barrier.wait()
        reply, status = handlers.handle_event(registry, patient, event)
        replies.append((status, reply.data))

    started = time.monotonic()
    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    print(
        f"\ntwo concurrent deliveries: {sorted(s for s, _ in replies)} in "
        f"{time.monotonic() - started:.1f}s, versions {registry.list_model_versions('m')}"
    )
    assert sorted(s for s, _ in replies) == [200, 201]
    assert replies[0][1] == replies[1][1]
    assert registry.list_model_versions("m") == [1]


def test_a_duplicate_of_an_event_still_held_answers_409_after_its_bounded_wait(registry):
    registry.claim_event("/tests/handlers", "held", events.CONFIGURATION_CREATE, hold_s=60)
    stored_model(registry)
    quick = SETTINGS.replace(register_event_wait_s=0.3)
    event = Event(
        events.CONFIGURATION_CREATE, "/tests/handlers", "held", {"name": "c", "models": ["m"]}
    )
    started = time.monotonic()
    with pytest.raises(Conflict, match="being handled by another delivery; retry later") as e:
        handlers.handle_event(registry, quick, event)
    assert 0.3 <= time.monotonic() - started < 3 and is_retried(e.value.status)
    assert registry.list_configurations() == []


def test_the_claim_of_a_crashed_handler_lapses_and_the_next_delivery_handles_the_event(registry):
    registry.claim_event("/tests/handlers", "crashed", events.CONFIGURATION_CREATE, hold_s=0.2)
    stored_model(registry)
    time.sleep(0.3)  # the handler holding it died: nobody finishes or releases the claim
    status, _, record = handle(
        registry, events.CONFIGURATION_CREATE, {"name": "c", "models": ["m"]}, event_id="crashed"
    )
    assert status == 201 and record["models"] == ["m@1"]


class FailsOnce(MemoryStore):
    """Storage that drops the first write of a configuration (a transient fault)."""

    failed = False

    def put(self, key: str, body: bytes, **kwargs):
        if key.startswith("configurations/") and not self.failed:
            self.failed = True
            raise Unavailable("storage unreachable: EndpointConnectionError")
        return super().put(key, body, **kwargs)


def test_a_failed_handling_gives_the_claim_back_so_the_redelivery_handles_it():
    registry = Registry(FailsOnce("unit"))
    stored_model(registry)
    data = {"name": "c", "models": ["m"]}
    with pytest.raises(Unavailable):
        handle(registry, events.CONFIGURATION_CREATE, data, event_id="flaky")
    assert registry.find_event("/tests/handlers", "flaky")["state"] == "released"
    assert handle(registry, events.CONFIGURATION_CREATE, data, event_id="flaky")[0] == 201
    assert handle(registry, events.CONFIGURATION_CREATE, data, event_id="flaky")[0] == 200


def test_an_event_id_reused_by_another_type_is_400(registry):
    stored_model(registry)
    handle(registry, events.CONFIGURATION_CREATE, {"name": "c", "models": ["m"]}, event_id="x")
    with pytest.raises(InvalidEvent, match="already used by a kml.configuration.create event"):
        handle(registry, events.DEPLOYMENT_CREATE, {"configuration": "c"}, event_id="x")


def succeeded_run(registry: Registry, run_id: str = "run-1") -> None:
    registry.put_datasource("ds", {"control_message": {"input_format": "RAW"}})
    registry.claim_run(run_id, {"datasource_id": "ds"})
    _, etag = registry.update_run(run_id, registry.get_run(run_id)[1], status="running")
    key = registry.run_artifact_key(run_id, "m", "model.keras")
    registry.store.put(key, b"keras")
    registry.update_run(
        run_id, etag, status="succeeded", models={"m": {"artifacts": {"model.keras": key}}}
    )


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"data_type": "str"}, "input_config.data_type: 'str' is not a numeric NumPy dtype"),
        ({"data_type": "uint8", "data_reshape": "8 ²"}, "input_config.data_reshape"),
        ({"data_type": "uint8", "label_type": "text"}, "input_config.label_type"),
    ],
)
def test_an_inference_input_config_no_codec_takes_is_422_naming_the_field(
    registry, config, problem
):
    succeeded_run(registry)
    spec = {
        "id": "bad",
        "run_id": "run-1",
        "input_format": "RAW",
        "input_config": config,
        "input_topic": "in",
        "output_topic": "out",
    }
    with pytest.raises(ValidationFailed) as e:
        handle(registry, events.INFERENCE_CREATE, spec)
    assert any(p.startswith(problem) for p in e.value.problems), e.value.problems
    assert registry.list_inference() == []


def test_a_model_version_that_is_not_ascii_digits_is_422_in_the_read_api(registry):
    stored_model(registry)
    client = create_app(SETTINGS, registry).test_client()
    for version in ("²", "٣"):
        reply = client.get(f"/models/m/{version}")
        assert reply.status_code == 422, reply.get_data(as_text=True)
        assert reply.get_json()["problems"] == [f"version: {version!r} is not a number"]
    assert client.get("/models/m/1").status_code == 200
