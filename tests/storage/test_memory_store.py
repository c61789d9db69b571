"""The in-memory store the unit tests use keeps the real store's interface and conditions."""

from __future__ import annotations

import inspect
import io

import pytest

from kafkaml.errors import NotFound, Unavailable
from storage.objects import ObjectStore, PreconditionFailed
from storage.registry import Registry
from tests.fakes import MemoryStore


def _public(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if not name.startswith("_") and callable(member) and name not in ("client",)
    }


def test_every_method_of_the_real_store_exists_with_the_same_signature():
    real, fake = _public(ObjectStore), _public(MemoryStore)
    assert set(real) <= set(fake)
    assert {n: str(fake[n]) for n in real} == {n: str(s) for n, s in real.items()}


def test_conditional_create_and_etag_update_lose_like_s3():
    store = MemoryStore()
    first = store.put("runs/r/status.json", b"v1", if_none_match=True)
    with pytest.raises(PreconditionFailed) as lost:
        store.put("runs/r/status.json", b"v2", if_none_match=True)
    assert lost.value.status == 409
    second = store.put("runs/r/status.json", b"v2", if_match=first)
    with pytest.raises(PreconditionFailed):
        store.put("runs/r/status.json", b"v3", if_match=first)
    assert store.get("runs/r/status.json").body == b"v2"
    assert store.get("runs/r/status.json").etag == second != first
    with pytest.raises(NotFound):
        store.put("runs/other/status.json", b"v1", if_match=first)


def test_listing_by_prefix_and_folders_and_files():
    store = MemoryStore()
    for key in ("models/a/1/model.json", "models/a/2/model.json", "models/b/1/model.json", "x"):
        store.put(key, b"{}")
    store.upload_file("models/b/files/f.keras", io.BytesIO(b"zip"))
    assert store.list("models/a/") == ["models/a/1/model.json", "models/a/2/model.json"]
    assert store.list_dirs("models/") == ["a", "b"]
    assert store.list_dirs("models/b/") == ["1", "files"]
    store.delete("models/a/2/model.json")
    store.delete("never-there")
    assert Registry(store).list_model_versions("a") == [1]


def test_a_down_store_is_unavailable():
    store = MemoryStore()
    store.down = True
    with pytest.raises(Unavailable):
        store.ping()
    with pytest.raises(Unavailable):
        store.get("anything")


def test_listing_streams_skips_objects_under_streams_that_are_no_stream_record():
    registry = Registry(MemoryStore())
    registry.create_stream("stream-a", {"id": "stream-a", "topic": "sensors", "status": "open"})
    registry._store.put_json("streams/probe.json", {"n": 2})  # another tool's object
    registry._store.put_json("streams/legacy.json", {"id": 7, "topic": "t"})  # no id of its own
    listed = {s["id"]: s for s in registry.list_streams()}
    assert sorted(listed) == ["legacy", "stream-a"]  # an id from the key; the probe is skipped
    assert listed["legacy"]["topic"] == "t" and listed["stream-a"]["status"] == "open"
