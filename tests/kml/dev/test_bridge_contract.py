"""What KafkaSource sends for a Kafka record: one test per attribute rule, through real Kafka.

One bridge delivers a handful of records (raw, binary CloudEvent, structured CloudEvent,
CloudEvent-shaped JSON, and one record per key type) to a recording HTTP server; each test
checks one rule of Knative's KafkaSource on what was recorded. Delivery rules are in
test_bridge_delivery.py, what the real dispatcher was seen doing beyond them in
test_bridge_observed.py.
"""

from __future__ import annotations

import base64
import json
import logging
import struct

import pytest

from tests.kml.dev.bridge_helpers import (
    NAMESPACE,
    Recorder,
    create_topic,
    kafka_source,
    produce,
    start_bridge,
)

pytestmark = pytest.mark.integration

TS = 1_700_000_000_123  # 2023-11-14T22:13:20.123Z
STRUCTURED_EVENT = {
    "specversion": "1.0",
    "id": "s-1",
    "source": "/producer",
    "type": "my.structured",
    "datacontenttype": "application/json",
    "myext": "yes",
    "data": {"a": [1, 2]},
}


@pytest.fixture(scope="module")
def delivered(stack, tmp_path_factory):
    """The requests the sink received, keyed by a name per produced record."""
    tmp = tmp_path_factory.mktemp("bridge-contract")
    suffix = tmp.name[-6:].replace("_", "")
    main, keys = f"attrs-{suffix}", {t: f"keys-{t}-{suffix}" for t in ("int", "float", "byte")}
    create_topic(stack.kafka_bootstrap, main, partitions=3)
    for topic in keys.values():
        create_topic(stack.kafka_bootstrap, topic)
    recorder = Recorder()
    docs = [kafka_source("attrs", [main], "rec", ce_overrides={"team": "ml", "stage": "test"})]
    for label, topic in (
        ("int", keys["int"]),
        ("float", keys["float"]),
        ("byte-array", keys["byte"]),
    ):
        docs.append(
            kafka_source(
                f"keys-{label}",
                [topic],
                "rec",
                labels={"kafkasources.sources.knative.dev/key-type": label},
            )
        )
    produce(
        stack.kafka_bootstrap,
        main,
        [
            {
                "partition": 1,
                "timestamp": TS,
                "key": b"dep-7",
                "value": b'{"x": 1}',
                "headers": [
                    ("Content-Type", b"Application/JSON"),
                    ("X-Trace_Id.9", b"abc"),
                    ("retries", b"3"),
                ],
            },
            {"partition": 2, "timestamp": TS + 1000, "value": b"\x00\x01raw"},
            {
                "partition": 0,
                "timestamp": TS,
                "key": b"k",
                "value": b"hello",
                "headers": [
                    ("ce_specversion", b"1.0"),
                    ("ce_id", b"b-1"),
                    ("ce_source", b"/mine"),
                    ("ce_type", b"my.binary"),
                    ("ce_myext", b"v"),
                    ("content-type", b"text/plain"),
                ],
            },
            {
                "partition": 0,
                "timestamp": TS,
                "key": b"k2",
                "value": json.dumps(STRUCTURED_EVENT).encode(),
                "headers": [("content-type", b"application/cloudevents+json")],
            },
            {"partition": 0, "timestamp": TS, "value": json.dumps(STRUCTURED_EVENT).encode()},
        ],
    )
    produce(
        stack.kafka_bootstrap,
        keys["int"],
        [{"key": struct.pack(">i", -42), "value": b"i"}, {"key": b"12345", "value": b"i"}],
    )
    produce(
        stack.kafka_bootstrap,
        keys["float"],
        [
            {"key": struct.pack(">f", 1.5), "value": b"f"},
            {"key": struct.pack(">d", 0.1), "value": b"f"},
        ],
    )
    produce(stack.kafka_bootstrap, keys["byte"], [{"key": b"\xff\x00\x01", "value": b"b"}])
    bridge = start_bridge(stack, tmp, docs, {"rec": recorder.url})
    try:
        got = recorder.wait_for(10)
    finally:
        bridge.stop()
        recorder.close()
    source = f"/apis/v1/namespaces/{NAMESPACE}/kafkasources/attrs#{main}"

    def by_offset(body: bytes):
        return sorted((r for r in got if r.body == body), key=lambda r: r.ce["knativekafkaoffset"])

    def find(**ce: str):
        hits = [r for r in got if all(r.ce.get(k) == v for k, v in ce.items())]
        assert len(hits) == 1, (ce, [r.ce for r in got])
        return hits[0]

    return {
        "topic": main,
        "all": got,
        "source": source,
        "raw": find(source=source, id="partition:1/offset:0"),
        "raw_plain": find(source=source, id="partition:2/offset:0"),
        "binary_ce": find(id="b-1"),
        "structured_ce": find(id="s-1"),
        "ce_shaped": find(source=source, id="partition:0/offset:2"),
        "int": by_offset(b"i"),
        "float": by_offset(b"f"),
        "byte": [r for r in got if r.body == b"b"],
    }


def test_row_always_post_in_binary_mode_with_prefer_reply_and_kn_namespace(delivered):
    for req in delivered["all"]:
        assert req.method == "POST"
        assert req.headers["ce-specversion"] == "1.0"
        assert req.headers.get("content-type") != "application/cloudevents+json"
        assert req.headers["prefer"] == "reply"
        assert req.headers["kn-namespace"] == NAMESPACE
    assert delivered["raw"].body == b'{"x": 1}'


def test_row_specversion_is_1_0(delivered):
    assert delivered["raw"].ce["specversion"] == "1.0"


def test_row_id_is_partition_and_offset(delivered):
    assert delivered["raw"].ce["id"] == "partition:1/offset:0"
    assert delivered["raw_plain"].ce["id"] == "partition:2/offset:0"


def test_row_source_names_namespace_source_and_topic(delivered):
    assert delivered["raw"].ce["source"] == delivered["source"]


def test_row_type_is_dev_knative_kafka_event(delivered):
    assert delivered["raw"].ce["type"] == "dev.knative.kafka.event"


def test_row_subject_is_partition_hash_offset(delivered):
    assert delivered["raw"].ce["subject"] == "partition:1#0"


def test_row_time_is_record_timestamp_utc_rfc3339_with_milliseconds(delivered):
    assert delivered["raw"].ce["time"] == "2023-11-14T22:13:20.123Z"
    assert delivered["raw_plain"].ce["time"] == "2023-11-14T22:13:21.123Z"


def test_row_datacontenttype_is_content_type_header_lower_cased_or_absent(delivered):
    assert delivered["raw"].headers["content-type"] == "application/json"
    assert "content-type" not in delivered["raw_plain"].headers
    assert delivered["raw_plain"].body == b"\x00\x01raw"


def test_row_key_and_partitionkey_extensions_string_by_default(delivered):
    assert delivered["raw"].ce["key"] == delivered["raw"].ce["partitionkey"] == "dep-7"
    assert "key" not in delivered["raw_plain"].ce  # a record without a key has none


@pytest.mark.parametrize(
    "label, expected",
    [
        ("int", ["-42", "12345"]),  # 4 bytes big-endian; other lengths fall back to string
        ("float", ["1.5", "0.1"]),  # 4-byte float, 8-byte double
        ("byte", [base64.b64encode(b"\xff\x00\x01").decode()]),
    ],
)
def test_row_key_type_label_selects_int_float_or_byte_array(delivered, label, expected):
    got = [r.ce["key"] for r in delivered[label]]
    assert got == expected
    assert [r.ce["partitionkey"] for r in delivered[label]] == expected


def test_row_kafkaheader_extension_per_other_header_with_name_rule(delivered):
    ce = delivered["raw"].ce
    assert ce["kafkaheaderxtraceid9"] == "abc"
    assert ce["kafkaheaderretries"] == "3"
    assert not any(k.startswith("kafkaheadercontent") for k in ce)


def test_row_binary_cloudevent_record_passes_through_unchanged(delivered):
    req = delivered["binary_ce"]
    assert req.ce["source"] == "/mine" and req.ce["type"] == "my.binary"
    assert req.ce["myext"] == "v"
    assert req.headers["content-type"] == "text/plain"
    assert req.body == b"hello"
    assert "key" not in req.ce and "partitionkey" not in req.ce
    assert not any(k.startswith("kafkaheader") for k in req.ce)


def test_row_structured_cloudevent_record_passes_through_unchanged(delivered):
    req = delivered["structured_ce"]
    assert req.ce["source"] == "/producer" and req.ce["type"] == "my.structured"
    assert req.ce["myext"] == "yes"
    assert req.headers["content-type"] == "application/json"
    assert json.loads(req.body) == {"a": [1, 2]}
    assert "key" not in req.ce
    assert not any(k.startswith("kafkaheader") for k in req.ce)


def test_row_cloudevent_shaped_json_without_its_content_type_is_wrapped(delivered):
    req = delivered["ce_shaped"]
    assert req.ce["type"] == "dev.knative.kafka.event"
    assert json.loads(req.body) == STRUCTURED_EVENT


def test_row_every_event_has_partition_offset_and_ce_overrides(delivered):
    for name in ("raw", "raw_plain", "binary_ce", "structured_ce", "ce_shaped"):
        ce = delivered[name].ce
        assert (ce["team"], ce["stage"]) == ("ml", "test"), name
    assert delivered["raw"].record == ("1", "0")
    assert delivered["binary_ce"].record == ("0", "0")
    assert delivered["structured_ce"].record == ("0", "1")
    for req in delivered["int"] + delivered["byte"]:
        assert req.ce["knativekafkapartition"] == "0"
        assert "team" not in req.ce  # overrides belong to their own source


def test_bridge_logs_what_it_cannot_reproduce_at_start(stack, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="kml.bridge")
    bridge = start_bridge(stack, tmp_path, [], {})
    bridge.stop()
    lines = [r.getMessage() for r in caplog.records if "cannot reproduce" in r.getMessage()]
    assert any("bootstrapServers" in line for line in lines)
    assert any("scale to zero" in line for line in lines)
