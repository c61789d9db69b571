"""``kml.inference.create`` over the real MinIO: defaults from the run, refusals, stored YAML."""

from __future__ import annotations

import pytest
import yaml

from kafkaml.events import INFERENCE_CREATE, INFERENCE_CREATED
from tests.functions.register.conftest import answer

pytestmark = pytest.mark.integration

RAW_CONFIG = {
    "data_type": "float32",
    "label_type": "uint8",
    "data_reshape": "4",
    "label_reshape": "1",
}


def make_run(
    registry, run_id: str, status: str = "succeeded", models=("clf",), reason: str | None = None
) -> None:
    ds_id = f"ds-{run_id}"
    registry.put_datasource(
        ds_id,
        {
            "control_message": {
                "topic": "train:0:0:10",
                "input_format": "RAW",
                "input_config": RAW_CONFIG,
            }
        },
    )
    registry.claim_run(run_id, {"deployment_id": "1", "datasource_id": ds_id})
    _, etag = registry.get_run(run_id)
    if status == "claimed":
        return
    _, etag = registry.update_run(run_id, etag, status="running")
    trained = {
        m: {
            "metrics": {"loss": 0.5},
            "artifacts": {"model.keras": registry.run_artifact_key(run_id, m, "model.keras")},
        }
        for m in models
    }
    if status != "running":
        registry.update_run(
            run_id, etag, status=status, models=trained, reason=reason, permanent=status == "failed"
        )


def test_defaults_come_from_the_run_and_its_datasource(
    send, client, registry, unique, app_settings
):
    make_run(registry, f"run-{unique}")
    r = send(
        INFERENCE_CREATE,
        {
            "run_id": f"run-{unique}",
            "input_topic": f"in-{unique}",
            "output_topic": f"out-{unique}",
            "max_scale": 3,
        },
    )
    assert r.status_code == 201, r.data
    ce_type, record = answer(r)
    assert ce_type == INFERENCE_CREATED
    assert record["model"] == "clf" and record["input_format"] == "RAW"
    assert record["input_config"] == RAW_CONFIG
    assert (record["min_scale"], record["max_scale"], record["target_concurrency"]) == (0, 3, 10)
    docs = list(yaml.safe_load_all(record["manifests"]))
    assert [d["kind"] for d in docs] == ["Service", "KafkaSource", "NetworkPolicy"]
    assert docs[1]["spec"]["topics"] == [f"in-{unique}"]
    stored = registry.store.get(f"inference/{record['id']}.yaml").body.decode()
    assert stored == record["manifests"]
    assert app_settings.s3_secret_key not in stored
    shown = client.get(f"/inference/{record['id']}").get_json()
    assert shown["run_id"] == f"run-{unique}" and shown["output_topic"] == f"out-{unique}"


def test_chosen_id_format_and_model(send_binary, registry, unique):
    make_run(registry, f"run-{unique}", models=("a", "b"))
    event = {
        "id": f"inf-{unique}",
        "run_id": f"run-{unique}",
        "model": "b",
        "input_format": "JSON",
        "input_config": {"shape": [4]},
        "input_topic": "in",
        "output_topic": "out",
        "image": "example/infer:dev",
        "target_concurrency": 4,
    }
    r = send_binary(INFERENCE_CREATE, event)
    assert r.status_code == 201, r.data
    record = answer(r)[1]
    assert (record["id"], record["model"], record["input_format"]) == (f"inf-{unique}", "b", "JSON")
    service = next(yaml.safe_load_all(record["manifests"]))
    assert service["metadata"]["name"] == f"kml-infer-inf-{unique}"
    assert service["spec"]["template"]["spec"]["containers"][0]["image"] == "example/infer:dev"
    assert send_binary(INFERENCE_CREATE, event).status_code == 409


def test_run_with_several_models_needs_one_named(send_binary, registry, unique):
    make_run(registry, f"run-{unique}", models=("a", "b"))
    base = {"run_id": f"run-{unique}", "input_topic": "in", "output_topic": "out"}
    r = send_binary(INFERENCE_CREATE, base)
    assert r.status_code == 422 and "a, b" in r.get_json()["problems"][0]
    r = send_binary(INFERENCE_CREATE, {**base, "model": "c"})
    assert r.status_code == 422 and "no model 'c'" in r.get_json()["problems"][0]


def test_unfinished_run_is_409_failed_run_422_unknown_404(send_binary, registry, unique):
    event = {"input_topic": "in", "output_topic": "out"}
    make_run(registry, f"busy-{unique}", status="running")
    r = send_binary(INFERENCE_CREATE, {**event, "run_id": f"busy-{unique}"})
    assert r.status_code == 409 and "running" in r.get_json()["error"]
    make_run(registry, f"bad-{unique}", status="failed", reason="loss was NaN")
    r = send_binary(INFERENCE_CREATE, {**event, "run_id": f"bad-{unique}"})
    assert r.status_code == 422 and "loss was NaN" in r.get_json()["problems"][0]
    r = send_binary(INFERENCE_CREATE, {**event, "run_id": f"ghost-{unique}"})
    assert r.status_code == 404 and f"ghost-{unique}" in r.get_json()["error"]


def test_every_bad_field_listed(send_binary):
    r = send_binary(
        INFERENCE_CREATE,
        {
            "id": "Not_DNS",
            "run_id": "../x",
            "input_format": "CSV",
            "input_config": "x",
            "input_topic": "same",
            "output_topic": "same",
            "min_scale": 4,
            "max_scale": 2,
            "target_concurrency": 0,
            "image": "bad image",
            "replicas": 3,
        },
    )
    assert r.status_code == 422
    fields = {p.split(":")[0] for p in r.get_json()["problems"]}
    assert fields == {
        "id",
        "run_id",
        "input_format",
        "input_config",
        "output_topic",
        "min_scale",
        "target_concurrency",
        "image",
        "replicas",
    }
