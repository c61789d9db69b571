"""Register's stream routes over the real MinIO and Kafka: ``GET /streams`` and
``/streams/<id>`` answer the stream records with their lag, ``kml.stream.stop`` stops one."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from kafkaml.events import STREAM_STOP, STREAM_STOPPED
from kafkaml.kafka import ensure_topic
from tests.functions.register.conftest import answer

pytestmark = pytest.mark.integration


def make_stream(registry, stream_id: str, topic: str, cursor: dict[str, int]) -> None:
    registry.create_stream(
        stream_id,
        {
            "deployment_id": "7",
            "topic": topic,
            "status": "open",
            "cursor": cursor,
            "metric": "val_accuracy",
            "windows": [{"index": 0, "records": 10, "candidate": 0.5, "promote": True}],
            "promotions": 1,
        },
    )


def test_streams_are_listed_and_shown_with_their_lag(client, registry, stack, unique):
    topic = f"live-{unique}"
    ensure_topic(stack.kafka_bootstrap, topic, partitions=1)
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    for i in range(12):
        producer.produce(topic, value=bytes([i]), partition=0)
    assert producer.flush(30) == 0
    make_stream(registry, f"stream-{unique}", topic, {"0": 5})

    listed = client.get("/streams")
    assert listed.status_code == 200
    [mine] = [s for s in listed.get_json() if s.get("id") == f"stream-{unique}"]
    assert mine["lag"] == 7 and mine["promotions"] == 1  # 12 records, 5 trained

    shown = client.get(f"/streams/stream-{unique}").get_json()
    assert shown["lag"] == 7 and shown["windows"][0]["candidate"] == 0.5
    assert client.get(f"/streams/stream-none-{unique}").status_code == 404


def test_a_stream_is_stopped_by_its_event_once(send_binary, client, registry, unique):
    make_stream(registry, f"stream-{unique}", f"gone-{unique}", {"0": 0})
    r = send_binary(STREAM_STOP, {"stream_id": f"stream-{unique}"})
    assert r.status_code == 201, r.data
    ce_type, record = answer(r)
    assert ce_type == STREAM_STOPPED and record["status"] == "stopped"
    assert registry.get_stream(f"stream-{unique}")[0]["status"] == "stopped"
    assert len(record["windows"]) == 1  # its windows stay
    assert client.get(f"/streams/stream-{unique}").get_json()["lag"] == 0  # no topic, no lag

    unknown = send_binary(STREAM_STOP, {"stream_id": f"stream-none-{unique}"})
    assert unknown.status_code == 404
    missing = send_binary(STREAM_STOP, {})
    assert missing.status_code == 422 and "stream_id" in missing.get_json()["problems"][0]


def test_a_record_without_id_is_listed_under_its_key_and_a_foreign_object_left_out(
    client, registry, unique
):
    """Whatever else sits under streams/ (an older release's record, a hand-written one), the
    listing still answers: a record with a topic is listed under its key's name (even with a
    cursor this release cannot read), and an object that is no stream record is left out."""
    registry.store.put_json(f"streams/odd-{unique}.json", {"n": 1})
    registry.store.put_json(
        f"streams/bad-cursor-{unique}.json", {"topic": f"t-{unique}", "cursor": ["not", "a", "map"]}
    )
    listed = client.get("/streams")
    assert listed.status_code == 200, listed.data[:300]
    assert not [s for s in listed.get_json() if s.get("n") == 1]
    [bad] = [s for s in listed.get_json() if s.get("topic") == f"t-{unique}"]
    assert bad["id"] == f"bad-cursor-{unique}"
