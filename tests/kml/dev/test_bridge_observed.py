"""What Knative's real KafkaSource dispatcher was seen doing beyond its documented rules: one
test per observation, through the real broker, so a local test fails wherever a cluster would.

Header values go out raw (no percent-encoding), U+0080..U+00FF as single Latin-1 bytes, above
U+00FF as '?', trimmed of surrounding whitespace; a control character makes the request
unsendable and the record is dropped (no delivery, no dead letter, offset committed) after the
retry schedules. ``time`` drops trailing zeros of the fraction and writes UTC as Z. Invalid
CloudEvents are wrapped as raw records. Structured records are re-serialised by Jackson. A
timeout leaves only ``knativeerrordest``; ``kne-*`` headers only lose their prefix; dead-letter
sends are retried with the source's own policy.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid

import pytest

from tests.kml.dev.bridge_helpers import (
    Recorder,
    committed,
    create_topic,
    eventually,
    kafka_source,
    produce,
    start_bridge,
)

pytestmark = pytest.mark.integration

TS = 1_700_000_000_000  # 2023-11-14T22:13:20Z
DLS = {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "dls"}
BYTE_ARRAY = {"kafkasources.sources.knative.dev/key-type": "byte-array"}
HEADERS = [
    ("pct", b"pct%41x a%2Fb"),
    ("latin", "café".encode()),
    ("cyrillic", "ключ".encode()),
    ("padded", b"  padded\t"),
    ("tabonly", b"\t"),
]


@pytest.fixture(scope="module")
def seen(stack, tmp_path_factory):
    """Requests a recording sink received for a few records, by the record's value."""
    tmp = tmp_path_factory.mktemp("bridge-observed")
    topic, keys = f"obs-{uuid.uuid4().hex[:8]}", f"obs-keys-{uuid.uuid4().hex[:8]}"
    create_topic(stack.kafka_bootstrap, topic)
    create_topic(stack.kafka_bootstrap, keys)
    structured = {"specversion": "1.0", "id": "s-1", "source": "/p", "type": "t.s"}
    no_id = {k: v for k, v in structured.items() if k != "id"}
    produce(
        stack.kafka_bootstrap,
        topic,
        [
            {"value": b"headers", "key": "ключ".encode(), "headers": HEADERS, "timestamp": TS},
            {"value": b"ms300", "timestamp": TS + 300},
            {"value": b"ms120", "timestamp": TS + 120},
            {
                "value": b"binary-ce",
                "headers": [
                    ("ce_specversion", b"1.0"),
                    ("ce_id", b"b-1"),
                    ("ce_source", b"/p"),
                    ("ce_type", b"t.b"),
                    ("ce_time", b"2023-11-14T22:13:20.100+00:00"),
                ],
            },
            {
                "value": b"binary-no-type",
                "timestamp": TS,
                "headers": [("ce_specversion", b"1.0"), ("ce_id", b"b-2"), ("ce_source", b"/p")],
            },
            {
                "value": json.dumps({**no_id, "data": "no-id"}).encode(),
                "headers": [("content-type", b"application/cloudevents+json")],
            },
            {
                "value": json.dumps(
                    {**structured, "data": {"lr": 0.0000001, "name": "é", "n": 3}}
                ).encode(),
                "headers": [("content-type", b"application/cloudevents+json")],
            },
        ],
    )
    produce(stack.kafka_bootstrap, keys, [{"value": b"k", "key": bytes([i])} for i in range(256)])
    recorder = Recorder()
    docs = [
        kafka_source("obs", [topic], "rec"),
        kafka_source("obs-keys", [keys], "rec", labels=BYTE_ARRAY),
    ]
    bridge = start_bridge(stack, tmp, docs, {"rec": recorder.url})
    try:
        got = recorder.wait_for(7 + 256)
    finally:
        bridge.stop()
        recorder.close()
    by_body: dict[bytes, list] = {}
    for req in got:
        by_body.setdefault(req.body, []).append(req)
    return by_body


def _one(seen, body: bytes):
    (req,) = seen[body]
    return req


def test_header_values_are_not_percent_encoded(seen):
    assert _one(seen, b"headers").ce["kafkaheaderpct"] == "pct%41x a%2Fb"


def test_latin_1_characters_go_out_as_single_bytes(seen):
    # The recorder reads each header byte as one character: UTF-8 would read 'cafÃ©'.
    assert _one(seen, b"headers").ce["kafkaheaderlatin"] == "café"


def test_characters_above_u00ff_arrive_as_question_marks(seen):
    req = _one(seen, b"headers")
    assert req.ce["kafkaheadercyrillic"] == "????"
    assert req.ce["key"] == req.ce["partitionkey"] == "????"  # a string key is mangled too


def test_leading_and_trailing_whitespace_is_stripped(seen):
    req = _one(seen, b"headers")
    assert req.ce["kafkaheaderpadded"] == "padded"
    assert req.ce["kafkaheadertabonly"] == ""


def test_byte_array_keys_arrive_base64_for_every_byte(seen):
    keys = sorted(base64.b64decode(r.ce["key"]) for r in seen[b"k"])
    assert keys == [bytes([i]) for i in range(256)]
    assert all(r.ce["partitionkey"] == r.ce["key"] for r in seen[b"k"])


def test_time_drops_trailing_zeros_of_the_fraction(seen):
    assert _one(seen, b"headers").ce["time"] == "2023-11-14T22:13:20Z"
    assert _one(seen, b"ms300").ce["time"] == "2023-11-14T22:13:20.3Z"
    assert _one(seen, b"ms120").ce["time"] == "2023-11-14T22:13:20.12Z"


def test_a_passed_through_utc_offset_is_rewritten_as_z(seen):
    req = _one(seen, b"binary-ce")
    assert req.ce["id"] == "b-1" and req.ce["time"] == "2023-11-14T22:13:20.1Z"


def test_a_binary_record_without_ce_type_is_wrapped_as_a_raw_kafka_event(seen):
    req = _one(seen, b"binary-no-type")
    assert req.ce["type"] == "dev.knative.kafka.event"
    assert req.ce["id"].startswith("partition:0/offset:")
    assert (req.ce["kafkaheadercespecversion"], req.ce["kafkaheaderceid"]) == ("1.0", "b-2")
    assert req.ce["kafkaheadercesource"] == "/p"


def test_a_structured_record_without_id_is_wrapped_with_its_whole_value_as_body(seen):
    (req,) = [r for bodies in seen.values() for r in bodies if b'"no-id"' in r.body]
    assert req.ce["type"] == "dev.knative.kafka.event"
    assert json.loads(req.body)["data"] == "no-id"  # the envelope included
    assert req.headers["content-type"] == "application/cloudevents+json"


def test_structured_data_is_re_serialised_like_jackson(seen):
    (req,) = [r for bodies in seen.values() for r in bodies if r.ce.get("id") == "s-1"]
    assert req.body == '{"lr":1.0E-7,"name":"é","n":3}'.encode()  # same value, raw UTF-8
    assert json.loads(req.body) == {"lr": 1e-7, "name": "é", "n": 3}


def test_a_structured_record_without_datacontenttype_is_sent_as_application_json(seen):
    (req,) = [r for bodies in seen.values() for r in bodies if r.ce.get("id") == "s-1"]
    assert req.headers["content-type"] == "application/json"


# -- deliveries that fail -------------------------------------------------------------------
@pytest.fixture
def env(stack, tmp_path):
    started: list = []

    class Env:
        topic = f"obs-{uuid.uuid4().hex[:10]}"
        group = f"g-{uuid.uuid4().hex[:10]}"
        bootstrap = stack.kafka_bootstrap

        def recorder(self, *args, **kwargs) -> Recorder:
            started.append(rec := Recorder(*args, **kwargs))
            return rec

        def bridge(self, docs, urls):
            started.append(b := start_bridge(stack, tmp_path / uuid.uuid4().hex[:6], docs, urls))
            return b

        def records(self, records):
            create_topic(self.bootstrap, self.topic)
            produce(self.bootstrap, self.topic, records)

    yield Env()
    for thing in reversed(started):
        thing.stop() if hasattr(thing, "consumers") else thing.close()


def test_a_control_character_drops_the_record_after_both_retry_schedules(env, caplog):
    caplog.set_level(logging.ERROR, logger="kml.bridge")
    sink, dls = env.recorder(), env.recorder()
    env.records(
        [
            {"value": b"bell", "headers": [("note", b"ring\x07")]},
            {"value": b"next", "headers": [("note", b"fine")]},
        ]
    )
    delivery = {"retry": 2, "backoffPolicy": "exponential", "backoffDelay": "PT0.2S"}
    started = time.monotonic()
    env.bridge(
        [
            kafka_source(
                "bell", [env.topic], "sink", delivery=delivery, dead_letter=DLS, group=env.group
            )
        ],
        {"sink": sink.url, "dls": dls.url},
    )
    (after,) = sink.wait_for(1, timeout=30)
    assert after.body == b"next"  # "bell" never left the bridge, not even to the dead letters
    assert after.at - started >= 2 * (0.4 + 0.8)  # sink schedule, then the dead-letter one
    eventually(lambda: committed(env.bootstrap, env.group, env.topic) == [2], what="commit 2")
    assert dls.received == [] and [r.body for r in sink.received] == [b"next"]
    assert any(
        "DROPPED" in r.getMessage() and getattr(r, "fields", {}).get("offset") == 0
        for r in caplog.records
    )


def test_string_keys_lose_control_bytes_empty_tab_and_question_marks_above_127(env):
    sink, dls = env.recorder(), env.recorder()
    env.records([{"value": bytes([i]), "key": bytes([i])} for i in range(256)])
    delivery = {"retry": 0, "backoffDelay": "PT0.01S"}
    env.bridge(
        [
            kafka_source(
                "keys", [env.topic], "sink", delivery=delivery, dead_letter=DLS, group=env.group
            )
        ],
        {"sink": sink.url, "dls": dls.url},
    )
    eventually(lambda: committed(env.bootstrap, env.group, env.topic) == [256], what="all done")
    keys = {r.body[0]: r.ce["key"] for r in sink.received}
    lost = [*range(0, 9), *range(10, 32), 127]
    assert sorted(set(range(256)) - set(keys)) == lost and dls.received == []
    assert keys[9] == keys[32] == ""  # a tab or a space alone is stripped away
    assert {keys[i] for i in range(128, 256)} == {"?"}  # read as deployment 63
    assert all(keys[i] == chr(i) for i in range(33, 127))


def test_after_a_timeout_the_dead_letter_sink_gets_only_the_destination(env):
    sink = env.recorder(lambda req, n: (-2, {"sleep": "1.0"}, b""))
    dls = env.recorder()
    env.records([{"value": b"slow"}])
    delivery = {"retry": 0, "timeout": "PT0.3S"}
    env.bridge(
        [kafka_source("slow", [env.topic], "sink", delivery=delivery, dead_letter=DLS)],
        {"sink": sink.url, "dls": dls.url},
    )
    (dead,) = dls.wait_for(1)
    assert dead.ce["knativeerrordest"] == sink.url
    assert not {"knativeerrorcode", "knativeerrordata"} & set(dead.ce)


def test_kne_response_headers_lose_only_their_prefix_and_case(env):
    sink = env.recorder(
        lambda req, n: (422, {"KNE-Why_Not": "Bad Model", "Kne-Run-Id": "r-1"}, b"")
    )
    dls = env.recorder()
    env.records([{"value": b"x"}])
    env.bridge(
        [kafka_source("kne", [env.topic], "sink", dead_letter=DLS)],
        {"sink": sink.url, "dls": dls.url},
    )
    (dead,) = dls.wait_for(1)
    assert dead.ce["why_not"] == "Bad Model" and dead.ce["run-id"] == "r-1"


def test_dead_letter_sends_are_retried_with_the_sources_policy(env):
    sink = env.recorder(lambda req, n: (400, {}, b""))
    dls = env.recorder(lambda req, n: (503 if n <= 2 else 200, {}, b""))
    env.records([{"value": b"x"}])
    delivery = {"retry": 2, "backoffPolicy": "linear", "backoffDelay": "PT0.2S"}
    env.bridge(
        [kafka_source("dlr", [env.topic], "sink", delivery=delivery, dead_letter=DLS)],
        {"sink": sink.url, "dls": dls.url},
    )
    sends = dls.wait_for(3)
    assert len(sink.received) == 1  # a 400 is not retried ...
    gaps = [round(b.at - a.at, 2) for a, b in zip(sends, sends[1:], strict=False)]
    assert 0.2 <= gaps[0] < 0.35 and 0.4 <= gaps[1] < 0.55, gaps  # ... its dead letter is


def test_the_start_log_names_what_the_bridge_cannot_reproduce(stack, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="kml.bridge")
    start_bridge(stack, tmp_path, [], {}).stop()
    lines = [r.getMessage() for r in caplog.records if "cannot reproduce" in r.getMessage()]
    assert any("CPU per record" in line for line in lines)
    assert any("Jackson" in line for line in lines)
