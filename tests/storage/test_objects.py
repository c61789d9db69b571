"""The real local MinIO: put/get, multipart upload, listing by prefix, conditional create."""

from __future__ import annotations

import io
import os

import pytest

from kafkaml.errors import NotFound
from storage.objects import ObjectStore, PreconditionFailed

pytestmark = pytest.mark.integration


@pytest.fixture
def store(stack) -> ObjectStore:
    return ObjectStore.from_settings(stack)


def test_put_get_roundtrip(store, unique):
    etag = store.put(f"t/{unique}/a.bin", b"\x00\x01hello")
    got = store.get(f"t/{unique}/a.bin")
    assert got.body == b"\x00\x01hello" and got.etag == etag


def test_missing_object_is_not_found(store, unique):
    with pytest.raises(NotFound):
        store.get(f"t/{unique}/nope")


def test_multipart_upload(store, unique):
    data = os.urandom(12 * 1024 * 1024)  # above the 5 MiB part minimum: three parts of 5 MiB
    store.upload_file(f"t/{unique}/big", io.BytesIO(data), part_size=5 * 1024 * 1024)
    got = store.get(f"t/{unique}/big")
    assert got.body == data
    assert got.etag.strip('"').endswith("-3"), "a multipart ETag names its part count"


def test_list_by_prefix(store, unique):
    for key in ("a/1", "a/2", "b/1"):
        store.put(f"t/{unique}/{key}", b"x")
    assert store.list(f"t/{unique}/a/") == [f"t/{unique}/a/1", f"t/{unique}/a/2"]
    assert store.list_dirs(f"t/{unique}/") == ["a", "b"]


def test_conditional_create_refused_the_second_time(store, unique):
    key = f"t/{unique}/once"
    store.put(key, b"first", if_none_match=True)
    with pytest.raises(PreconditionFailed) as e:
        store.put(key, b"second", if_none_match=True)
    assert e.value.status == 409
    assert store.get(key).body == b"first"


def test_conditional_create_is_http_412(store, unique):
    """The wire-level answer MinIO gives to the second If-None-Match: * create."""
    from botocore.exceptions import ClientError

    key = f"t/{unique}/raw"
    store.client.put_object(Bucket=store.bucket, Key=key, Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError) as e:
        store.client.put_object(Bucket=store.bucket, Key=key, Body=b"2", IfNoneMatch="*")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412


def test_update_with_stale_etag_is_refused(store, unique):
    key = f"t/{unique}/state"
    first = store.put(key, b"v1", if_none_match=True)
    store.put(key, b"v2", if_match=first)
    with pytest.raises(PreconditionFailed):
        store.put(key, b"v3", if_match=first)
    assert store.get(key).body == b"v2"
