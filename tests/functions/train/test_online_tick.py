"""A tick walks every open stream on its own: one stream that cannot be advanced is reported
and the others still get their window (or their idle answer)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from functions.train.online import OnlineTrainer
from kafkaml.settings import Settings
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
