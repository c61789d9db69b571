"""A tick walks every open stream on its own: one stream that cannot be advanced (a record
lacking a field, a window another attempt holds, Kafka away for its topic) is reported and the
others still get their window (or their idle answer); only a transient fault that failed every
stream fails the tick."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from functions.train.online import OnlineTrainer
from functions.train.windows import window_run_id
from kafkaml.errors import Unavailable
from kafkaml.settings import Settings
from kafkaml.wire import OffsetRange
from storage.registry import Registry
from tests.fakes import MemoryStore


def test_a_stream_record_missing_a_field_does_not_stop_the_tick_for_the_others():
    registry = Registry(MemoryStore("unit"))
    registry.create_stream(
        "stream-bare", {"id": "stream-bare", "status": "open", "topic": "t1", "cursor": {"0": 0}}
    )
    registry.create_stream(
        "stream-idle",
        {
            "id": "stream-idle",
            "status": "open",
            "topic": "t2",
            "cursor": {"0": 5},
            "window_records": 100,
            "window_seconds": 60.0,
            "indefinite": False,
            "last_data": time.time(),
        },
    )
    trainer = SimpleNamespace(settings=Settings(bucket="unit"), registry=registry)
    online = OnlineTrainer(trainer, offsets=lambda topic: {0: 5})

    report = {r["stream_id"]: r for r in online.tick()["streams"]}

    assert report["stream-idle"] == {"stream_id": "stream-idle", "window": None, "status": "open"}
    assert report["stream-bare"]["status"] == 422
    assert "KeyError" in report["stream-bare"]["error"]
    assert "window_records" in report["stream-bare"]["error"]


def _open(registry: Registry, sid: str, topic: str, cursor: int = 0) -> None:
    registry.create_stream(
        sid,
        {
            "id": sid,
            "deployment_id": "7",
            "status": "open",
            "topic": topic,
            "control_message": {"input_format": "RAW", "input_config": {"data_type": "uint8"}},
            "test_rate": 0.2,
            "cursor": {"0": cursor},
            "window_records": 100,
            "window_seconds": 60.0,
            "indefinite": False,
            "last_data": time.time(),
            "windows": [],
        },
    )


def _online(registry: Registry, ends: dict[str, int]) -> OnlineTrainer:
    def offsets(topic: str) -> dict[int, int]:
        if topic not in ends:
            raise Unavailable(f"Kafka did not answer for {topic}")
        return {0: ends[topic]}

    trainer = SimpleNamespace(settings=Settings(bucket="unit"), registry=registry)
    return OnlineTrainer(trainer, offsets=offsets)


def test_a_stream_whose_window_is_held_is_skipped_and_the_tick_answers_for_the_others():
    registry = Registry(MemoryStore("unit"))
    _open(registry, "stream-held", "t1")
    _open(registry, "stream-idle", "t2", cursor=5)
    held_run = window_run_id("stream-held", [OffsetRange("t1", 0, 0, 5)])
    registry.claim_run(held_run, {"stream_id": "stream-held", "lease_expires": time.time() + 60})

    report = {r["stream_id"]: r for r in _online(registry, {"t1": 5, "t2": 5}).tick()["streams"]}

    assert report["stream-held"]["skipped"] == "held" and report["stream-held"]["status"] == 409
    assert held_run in report["stream-held"]["error"]
    assert report["stream-idle"] == {"stream_id": "stream-idle", "window": None, "status": "open"}
    assert registry.get_stream("stream-held")[0]["cursor"] == {"0": 0}  # nothing moved


def test_a_transient_fault_fails_the_tick_only_when_it_failed_every_stream():
    registry = Registry(MemoryStore("unit"))
    _open(registry, "stream-away", "t3")
    _open(registry, "stream-idle", "t2", cursor=5)

    report = {r["stream_id"]: r for r in _online(registry, {"t2": 5}).tick()["streams"]}
    assert report["stream-away"]["status"] == 503 and "t3" in report["stream-away"]["error"]
    assert report["stream-idle"]["window"] is None

    _, etag = registry.get_stream("stream-idle")
    registry.update_stream("stream-idle", etag, status="stopped")
    with pytest.raises(Unavailable, match="t3"):  # nothing done at all: 503, retried
        _online(registry, {"t2": 5}).tick()


def test_a_window_that_failed_for_good_fails_its_stream_and_no_tick_tries_it_again():
    registry = Registry(MemoryStore("unit"))
    _open(registry, "stream-bad", "t1")
    _open(registry, "stream-idle", "t2", cursor=5)
    bad_run = window_run_id("stream-bad", [OffsetRange("t1", 0, 0, 5)])
    registry.claim_run(bad_run, {"stream_id": "stream-bad", "lease_expires": time.time() + 60})
    _, etag = registry.get_run(bad_run)
    registry.update_run(
        bad_run, etag, status="failed", permanent=True, error_status=422,
        reason="record 3 of t1:0 does not decode: 7 bytes, expected 64",
    )  # fmt: skip
    online = _online(registry, {"t1": 5, "t2": 5})

    report = {r["stream_id"]: r for r in online.tick()["streams"]}
    assert (
        report["stream-bad"]["status"] == 422 and "does not decode" in report["stream-bad"]["error"]
    )
    assert report["stream-idle"]["window"] is None
    stream = registry.get_stream("stream-bad")[0]
    assert (stream["status"], stream["failed_run"]) == ("failed", bad_run)
    assert "does not decode" in stream["reason"] and stream["cursor"] == {"0": 0}

    again = {r["stream_id"] for r in online.tick()["streams"]}
    assert again == {"stream-idle"}  # a failed stream is not ticked again
