"""S3 least privilege on the real MinIO the test session starts: each function's local user can
do what its function does and nothing more. The session's fixtures keep the root user."""

from __future__ import annotations

import io

import pytest

from kafkaml.errors import KmlError
from kml.dev.s3_users import function_settings, provision, users_file
from storage.objects import ObjectStore
from storage.registry import Registry
from storage.signed import SignedReader

pytestmark = pytest.mark.integration


def store_of(stack, function: str) -> ObjectStore:
    return ObjectStore.from_settings(function_settings(stack, function))


def refused(write) -> KmlError:
    with pytest.raises(KmlError) as caught:
        write()
    assert "AccessDenied" in str(caught.value), caught.value
    return caught.value


def test_each_function_has_its_own_key_kept_private(stack):
    keys = {f: function_settings(stack, f).s3_access_key for f in ("register", "train", "infer")}
    assert len(set(keys.values()) | {stack.s3_access_key}) == 4
    assert users_file(stack.state_dir).stat().st_mode & 0o077 == 0
    # provisioning again (a second `kml dev up`) keeps the keys the functions were started with
    assert (
        provision(stack)["infer"]["secret_key"] == function_settings(stack, "infer").s3_secret_key
    )


def test_infer_reads_a_model_and_cannot_write_anything(stack, unique):
    root = ObjectStore.from_settings(stack)
    key = f"runs/run-{unique}/m/model.tflite"
    root.put(key, b"weights", content_type="application/octet-stream")
    root.put_json(f"inference/inf-{unique}.json", {"id": unique})

    infer = store_of(stack, "infer")
    assert infer.get(key).body == b"weights"
    reader = SignedReader.from_settings(function_settings(stack, "infer"))  # infer's cold start
    assert reader.get_json(f"inference/inf-{unique}.json")[0] == {"id": unique}
    assert not reader.exists(f"runs/run-{unique}/m/missing.tflite")  # a 404, not a 403

    for target in (key, f"models/m-{unique}/1/model.json", f"inference/inf-{unique}.yaml"):
        error = refused(lambda t=target: infer.put(t, b"x"))
        print(f"infer put {target}: {error}")
    refused(lambda: infer.upload_file(f"runs/run-{unique}/big", io.BytesIO(b"y" * 10)))
    assert root.get(key).body == b"weights"  # untouched
    # what infer does not serve, it cannot read either
    root.put_json(f"events/e-{unique}.json", {"secret": True})
    refused(lambda: infer.get(f"events/e-{unique}.json"))


def test_train_writes_runs_not_the_registry(stack, unique):
    train = store_of(stack, "train")
    train.put_json(f"runs/run-{unique}/status.json", {"status": "running"})
    Registry(train).get_run(f"run-{unique}")  # and reads it back
    for target in (f"deployments/d-{unique}.json", f"inference/i-{unique}.yaml"):
        error = refused(lambda t=target: train.put_json(t, {"forged": True}))
        print(f"train put {target}: {error}")


def test_register_writes_the_registry_not_runs(stack, unique):
    register = store_of(stack, "register")
    Registry(register).ensure_ready()  # register's readiness: head_bucket
    register.put_json(f"configurations/c-{unique}.json", {"name": unique})
    refused(lambda: register.put_json(f"runs/run-{unique}/status.json", {"status": "completed"}))


def test_the_dashboard_reads_and_cannot_write(stack, unique):
    root = ObjectStore.from_settings(stack)
    root.put(f"runs/run-{unique}/m/loss.png", b"png", content_type="image/png")
    dashboard = store_of(stack, "dashboard")
    assert dashboard.get(f"runs/run-{unique}/m/loss.png").body == b"png"
    refused(lambda: dashboard.put(f"streams/s-{unique}.json", b"{}"))
