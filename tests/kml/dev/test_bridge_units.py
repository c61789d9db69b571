"""Pure pieces of the bridge: durations, backoff, header bytes, times, JSON, keys, offsets."""

from __future__ import annotations

import pytest

from kml.dev.bridge.delivery import Attempt, error_extensions
from kml.dev.bridge.events import header_extension_name, key_extension
from kml.dev.bridge.offsets import OffsetTracker
from kml.dev.bridge.rendering import (
    Unsendable,
    header_value,
    jackson_json,
    java_float,
    java_instant,
    java_time,
)
from kml.dev.bridge.sources import DeliveryPolicy, SourceError, parse_duration


@pytest.mark.parametrize(
    "text, seconds",
    [("PT0.3S", 0.3), ("PT10M", 600), ("PT1H", 3600), ("P1DT2S", 86402), ("PT600S", 600)],
)
def test_iso_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "P", "PT", "0.3s", "PT-1S", "10"])
def test_bad_durations_are_refused(text):
    with pytest.raises(SourceError):
        parse_duration(text)


def test_backoff_has_no_jitter():
    exp = DeliveryPolicy(backoff_policy="exponential", backoff_delay_s=0.5)
    lin = DeliveryPolicy(backoff_policy="linear", backoff_delay_s=0.5)
    assert [exp.backoff(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert [lin.backoff(n) for n in (1, 2, 3)] == [0.5, 1.0, 1.5]


@pytest.mark.parametrize(
    "value, wire",
    [
        ('pct%41x a"b', b'pct%41x a"b'),  # raw: no percent-encoding
        ("café ÿ", b"caf\xe9 \xff"),  # U+0080..U+00FF: one Latin-1 byte each
        ("ключ €", b"???? ?"),  # above U+00FF: '?'
        ("  padded\t", b"padded"),  # HTTP drops leading and trailing whitespace
        ("\t", b""),
        ("in\tside", b"in\tside"),
    ],
)
def test_header_values_go_out_as_the_dispatcher_writes_them(value, wire):
    assert header_value("ce-x", value) == wire


@pytest.mark.parametrize("char", [0x00, 0x07, 0x08, 0x0A, 0x0D, 0x1F, 0x7F])
def test_a_control_character_makes_the_request_unsendable(char):
    with pytest.raises(Unsendable, match="ce-key"):
        header_value("ce-key", f"a{chr(char)}b")


def test_string_keys_decode_like_java_and_other_key_types():
    assert header_value("ce-key", key_extension(b"\xc8", "string")) == b"?"
    assert header_value("ce-key", key_extension("ключ".encode(), "string")) == b"????"
    assert key_extension(b"\x07", "byte-array") == "Bw=="
    assert header_extension_name("X-Trace_Id.9") == "kafkaheaderxtraceid9"


def test_times_drop_trailing_zeros_of_the_fraction_and_write_utc_as_z():
    base = 1_700_000_000_000
    assert [java_instant(base + ms) for ms in (0, 300, 120, 123)] == [
        "2023-11-14T22:13:20Z",
        "2023-11-14T22:13:20.3Z",
        "2023-11-14T22:13:20.12Z",
        "2023-11-14T22:13:20.123Z",
    ]
    assert java_time("2023-11-14T22:13:20.120+00:00") == "2023-11-14T22:13:20.12Z"
    assert java_time("2023-11-14T22:13:20+02:00") == "2023-11-14T22:13:20+02:00"
    with pytest.raises(ValueError):
        java_time("yesterday")


def test_json_is_written_as_jackson_writes_it():
    assert jackson_json({"x": 1e-7, "n": 3, "f": 2.0, "s": "é", "l": [True, None]}) == (
        '{"x":1.0E-7,"n":3,"f":2.0,"s":"é","l":[true,null]}'
    )
    assert [java_float(x, False) for x in (1e10, 2.0, 1e-5)] == ["1.0E10", "2.0", "1.0E-5"]


def test_dead_letter_data_is_cut_at_1024_bytes_and_kne_headers_only_lose_their_prefix():
    ext = error_extensions(
        "http://x",
        Attempt(status=500, body=b"a" * 2000, headers={"Kne-Why_Not": "w", "kne-": "empty"}),
    )
    assert len(ext["knativeerrordata"]) == 1368  # Base64 of 1024 bytes
    assert ext["why_not"] == "w" and ext["knativeerrorcode"] == "500"
    assert "" not in ext


def test_only_contiguous_finished_offsets_are_committed():
    t = OffsetTracker()
    t.assign("t", 0)
    for off in (5, 6, 7, 9):
        t.received("t", 0, off)
    t.finished("t", 0, 6)
    assert t.to_commit() == {}
    t.finished("t", 0, 5)
    assert t.to_commit() == {("t", 0): 7}
    t.committed({("t", 0): 7})
    t.finished("t", 0, 9)
    assert t.to_commit() == {}
    t.finished("t", 0, 7)
    assert t.to_commit() == {("t", 0): 10}
    t.revoke("t", 0)
    t.finished("t", 0, 11)  # a late finish after revocation is ignored
    assert t.to_commit() == {}
