"""The CloudEvents binding: both content modes, any JSON data, and clear errors for bad input."""

from __future__ import annotations

import base64

import pytest

from kafkaml.errors import BadRequest, InvalidEvent
from kafkaml.events import new_event, parse_http, record_key, to_http


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("data", [{"instances": [[1, 2]]}, [[0.5, 1.5], [2.5, 3.5]], 7])
def test_json_data_round_trips_in_both_modes(structured, data):
    headers, body = to_http(
        new_event("kml.inference.request", "/test", data, subject="s1"), structured=structured
    )
    event = parse_http(headers, body)
    assert event.type == "kml.inference.request" and event.source == "/test"
    assert event.json() == data
    assert event.get("subject") == "s1"


def test_binary_mode_keeps_raw_bytes_as_sent():
    headers, body = to_http(new_event("dev.knative.kafka.event", "/k", b"\x00\xff\x10"))
    assert body == b"\x00\xff\x10"
    assert parse_http(headers, body).data == b"\x00\xff\x10"


def test_extensions_are_kept():
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "partition:0/offset:5",
        "ce-source": "/s",
        "ce-type": "dev.knative.kafka.event",
        "ce-key": "7",
        "ce-kafkaheaderrunid": "r1",
    }
    event = parse_http(headers, b"{}")
    assert event.extensions["key"] == "7" and event.extensions["kafkaheaderrunid"] == "r1"


def test_a_request_that_is_no_cloudevent_is_named():
    with pytest.raises(InvalidEvent, match="not a CloudEvent"):
        parse_http({"content-type": "application/json"}, b"{}")


def test_a_missing_type_is_named():
    with pytest.raises(InvalidEvent, match="no type"):
        parse_http({"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s"}, b"{}")


def test_invalid_json_data_is_a_400_naming_the_problem():
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "1",
        "ce-source": "/s",
        "ce-type": "t",
        "content-type": "application/json",
    }
    with pytest.raises(BadRequest, match="not valid JSON") as e:
        parse_http(headers, b"{not json").json()
    assert e.value.status == 400


def test_a_broken_structured_event_is_invalid():
    with pytest.raises(InvalidEvent):
        parse_http({"content-type": "application/cloudevents+json"}, b'{"specversion": "1.0"}')


@pytest.mark.parametrize("body", [b"null", b"[]", b"3", b'"text"'])
def test_a_structured_body_that_is_not_a_json_object_is_invalid(body):
    with pytest.raises(InvalidEvent) as e:  # a 400, never an uncaught error (a 500)
        parse_http({"content-type": "application/cloudevents+json"}, body)
    assert e.value.status == 400


def test_attribute_values_are_taken_as_sent_never_percent_decoded():
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "partition:0/offset:1",
        "ce-source": "/s",
        "ce-type": "dev.knative.kafka.event",
        "ce-kafkaheadertrace": "pct%41x 50%25 é",  # KafkaSource's dispatcher writes values raw
    }
    assert parse_http(headers, b"").get("kafkaheadertrace") == "pct%41x 50%25 é"


@pytest.mark.parametrize(
    "key", [bytes([i]) for i in (0, 7, 9, 10, 63, 127, 128, 200, 255)] + [b"pct%41x", b"\xd0\xba"]
)
def test_record_key_gives_back_the_exact_bytes_of_a_byte_array_source(key):
    event = parse_http(
        {
            "ce-specversion": "1.0",
            "ce-id": "partition:0/offset:1",
            "ce-source": "/s",
            "ce-type": "dev.knative.kafka.event",
            "ce-key": base64.b64encode(key).decode(),
        },
        b"",
    )
    assert record_key(event) == key


def test_a_key_that_is_not_base64_is_a_400_naming_the_label():
    event = new_event("dev.knative.kafka.event", "/s", b"", key="pct%41x")
    with pytest.raises(InvalidEvent, match="key-type: byte-array") as e:
        record_key(event)
    assert e.value.status == 400
    assert record_key(new_event("dev.knative.kafka.event", "/s", b"")) is None
