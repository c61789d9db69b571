"""The read-only signed reader against the real MinIO: what infer's start path relies on."""

from __future__ import annotations

import pytest

from kafkaml.errors import KmlError, NotFound
from storage.objects import ObjectStore
from storage.signed import SignedReader

pytestmark = pytest.mark.integration


def test_reads_what_the_object_store_wrote(stack, unique, tmp_path):
    store, reader = ObjectStore.from_settings(stack), SignedReader.from_settings(stack)
    etag = store.put_json(f"signed/{unique}/spec.json", {"id": unique, "n": [1, 2]})
    store.put(f"signed/{unique}/dir with space/model.tflite", b"\x00\x01" * 70000)

    value, got_etag = reader.get_json(f"signed/{unique}/spec.json")
    assert value == {"id": unique, "n": [1, 2]} and got_etag == etag
    assert reader.exists(f"signed/{unique}/dir with space/model.tflite")
    assert not reader.exists(f"signed/{unique}/model.keras")
    target = tmp_path / "model.tflite"
    reader.download_file(f"signed/{unique}/dir with space/model.tflite", str(target))
    assert target.read_bytes() == b"\x00\x01" * 70000


def test_missing_object_is_not_found(stack, unique):
    with pytest.raises(NotFound):
        SignedReader.from_settings(stack).get(f"signed/{unique}/nope.json")


def test_wrong_credentials_are_refused_without_the_secret(stack, unique):
    reader = SignedReader.from_settings(stack.replace(s3_secret_key="not-the-secret"))
    with pytest.raises(KmlError) as e:
        reader.get(f"signed/{unique}/anything")
    assert e.value.status == 502 and "not-the-secret" not in str(e.value)
