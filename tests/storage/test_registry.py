"""The registry over the real local MinIO: immutable versions, conditional creates, run states."""

from __future__ import annotations

import threading

import pytest

from kafkaml.errors import Conflict, NotFound, ValidationFailed
from storage.objects import ObjectStore
from storage.records import ModelRef, check_transition
from storage.registry import Registry

pytestmark = pytest.mark.integration

DEFINITION = {
    "description": "tiny",
    "format": "keras_json",
    "keras_json": "{}",
    "compile": {"optimizer": "adam", "loss": "mse", "metrics": []},
}


@pytest.fixture
def registry(stack) -> Registry:
    reg = Registry.from_settings(stack)
    reg.ensure_ready()
    return reg


def test_versions_count_up_and_latest_is_default(registry, unique):
    name = f"m-{unique}"
    first = registry.register_model(name, DEFINITION)
    second = registry.register_model(name, {**DEFINITION, "description": "second"})
    assert (first["version"], second["version"]) == (1, 2)
    assert first["schema_version"] == 1
    assert registry.get_model(name)["description"] == "second"
    assert registry.get_model(name, 1)["description"] == "tiny"
    assert registry.list_model_versions(name) == [1, 2]
    listed = {m["name"]: m for m in registry.list_models()}
    assert listed[name]["versions"] == [1, 2]


def test_explicit_existing_version_is_409_naming_it(registry, unique):
    name = f"m-{unique}"
    registry.register_model(name, {**DEFINITION, "version": 3})
    with pytest.raises(Conflict) as e:
        registry.register_model(name, {**DEFINITION, "version": 3, "description": "other"})
    assert "version 3" in e.value.message and name in e.value.message
    assert registry.get_model(name, 3)["description"] == "tiny"


def test_concurrent_same_version_exactly_one_wins(registry, unique):
    name = f"m-{unique}"
    results: list[object] = []
    barrier = threading.Barrier(2)

    def register(i: int) -> None:
        barrier.wait()
        try:
            results.append(
                registry.register_model(name, {**DEFINITION, "version": 1, "description": f"w{i}"})
            )
        except Conflict as e:
            results.append(e)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wins = [r for r in results if isinstance(r, dict)]
    losses = [r for r in results if isinstance(r, Conflict)]
    assert len(wins) == 1 and len(losses) == 1
    assert registry.get_model(name, 1)["description"] == wins[0]["description"]


def test_concurrent_unversioned_registrations_get_distinct_versions(registry, unique):
    name = f"m-{unique}"
    versions: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: versions.append(registry.register_model(name, DEFINITION)["version"])
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(versions) == [1, 2, 3]


def test_unknown_model_is_404_and_bad_name_is_422(registry, unique):
    with pytest.raises(NotFound):
        registry.get_model(f"nope-{unique}")
    with pytest.raises(ValidationFailed):
        registry.register_model("../escape", DEFINITION)


def test_configuration_pins_versions_and_deployment_resolves(registry, unique):
    a, b = f"a-{unique}", f"b-{unique}"
    registry.register_model(a, DEFINITION)
    registry.register_model(a, DEFINITION)
    registry.register_model(b, DEFINITION)
    conf = registry.create_configuration({"name": f"c-{unique}", "models": [a, f"{a}@1", b]})
    assert conf["models"] == [f"{a}@2", f"{a}@1", f"{b}@1"]
    registry.register_model(a, DEFINITION)  # a later version does not change the configuration
    dep = registry.create_deployment(
        {"id": f"d-{unique}", "configuration": f"c-{unique}", "batch_size": 8, "epochs": 1}
    )
    resolved = registry.resolve_models(dep)
    assert [(m["name"], m["version"]) for m in resolved] == [(a, 2), (a, 1), (b, 1)]
    assert registry.get_deployment(f"d-{unique}")["models"] == conf["models"]
    with pytest.raises(Conflict):
        registry.create_configuration({"name": f"c-{unique}", "models": [a]})


def test_configuration_with_unknown_refs_lists_each(registry, unique):
    with pytest.raises(ValidationFailed) as e:
        registry.create_configuration(
            {"name": f"c-{unique}", "models": [f"x-{unique}", f"y-{unique}@2"]}
        )
    assert len(e.value.problems) == 2


def test_generated_deployment_ids_are_small_integers(registry, unique):
    registry.register_model(f"m-{unique}", DEFINITION)
    first = registry.create_deployment({"models": [f"m-{unique}"], "epochs": 1})
    second = registry.create_deployment({"models": [f"m-{unique}"], "epochs": 1})
    assert first["id"].isdigit() and int(second["id"]) == int(first["id"]) + 1
    assert {first["id"], second["id"]} <= {d["id"] for d in registry.list_deployments()}


def test_datasource_same_content_is_idempotent_other_content_conflicts(registry, unique):
    ds = {"topic": f"t-{unique}:0:0:10", "input_format": "RAW"}
    first = registry.put_datasource(f"ds-{unique}", ds)
    again = registry.put_datasource(f"ds-{unique}", dict(ds))
    assert again["created"] == first["created"]
    with pytest.raises(Conflict):
        registry.put_datasource(f"ds-{unique}", {**ds, "input_format": "AVRO"})
    assert registry.get_datasource(f"ds-{unique}")["input_format"] == "RAW"


def test_run_claim_once_then_state_machine(registry, unique):
    run_id = f"r-{unique}"
    run, created = registry.claim_run(run_id, {"deployment_id": "7", "datasource_id": "x"})
    assert created and run["status"] == "claimed"
    again, created_again = registry.claim_run(run_id, {"deployment_id": "7"})
    assert not created_again and again["created"] == run["created"]
    _, etag = registry.get_run(run_id)
    running, etag2 = registry.update_run(run_id, etag, status="running")
    with pytest.raises(Conflict):  # stale etag: someone else already updated it
        registry.update_run(run_id, etag, status="running")
    done, etag3 = registry.update_run(
        run_id, etag2, status="succeeded", models={"m": {"metrics": {"loss": 0.1}}}, extra="kept"
    )
    assert done["status"] == "succeeded" and done["extra"] == "kept"
    with pytest.raises(Conflict):
        registry.update_run(run_id, etag3, status="running")
    assert registry.get_run(run_id)[0]["status"] == "succeeded"
    assert registry.run_artifact_key(run_id, "m", "model.keras") == f"runs/{run_id}/m/model.keras"
    assert run_id in {r["run_id"] for r in registry.list_runs()}


def test_transient_failure_may_be_retried_permanent_may_not():
    check_transition("r", {"status": "failed", "permanent": False}, "running")
    with pytest.raises(Conflict):
        check_transition("r", {"status": "failed", "permanent": True}, "running")
    with pytest.raises(Conflict):
        check_transition("r", {"status": "claimed"}, "succeeded")


def test_inference_spec_requires_fields_and_is_unique(registry, unique):
    spec = {
        "id": f"i-{unique}",
        "run_id": "r",
        "model": "m",
        "input_format": "RAW",
        "input_config": {},
        "input_topic": "in",
        "output_topic": "out",
        "min_scale": 0,
        "max_scale": 2,
        "target_concurrency": 10,
    }
    assert registry.create_inference(spec)["id"] == f"i-{unique}"
    with pytest.raises(Conflict):
        registry.create_inference(spec)
    with pytest.raises(ValidationFailed) as e:
        registry.create_inference({"id": f"j-{unique}"})
    assert len(e.value.problems) == len(spec) - 1
    key = registry.put_inference_manifests(f"i-{unique}", "kind: Service\n")
    assert registry.store.get(key).body == b"kind: Service\n"


def test_model_refs_parse():
    assert ModelRef.parse("m@3") == ModelRef("m", 3)
    assert str(ModelRef.parse("m")) == "m"
    with pytest.raises(ValidationFailed):
        ModelRef.parse("m@zero")


def test_unreachable_storage_is_503(free_port_store):
    from kafkaml.errors import Unavailable

    with pytest.raises(Unavailable):
        Registry(free_port_store).get_model("m")


@pytest.fixture
def free_port_store() -> ObjectStore:
    from kml.dev.procs import free_port

    return ObjectStore(f"http://127.0.0.1:{free_port()}", "kml", "a", "b", timeout_s=1.0)


def test_keras_file_kept_once_and_removed_when_its_version_is_taken(registry, unique):
    name = f"f-{unique}"
    first = registry.register_model(name, {**DEFINITION, "version": 1}, keras_file=b"PK-one")
    assert registry.store.get(first["keras_file"]).body == b"PK-one"
    with pytest.raises(Conflict):
        registry.register_model(name, {**DEFINITION, "version": 1}, keras_file=b"PK-two")
    assert registry.store.list(f"models/{name}/files/") == [first["keras_file"]]
    assert registry.list_model_versions(name) == [1]
