"""Pure pieces of the bridge: durations, backoff, key and header rules, offsets, sinks."""

from __future__ import annotations

import pytest

from kml.dev.bridge.delivery import Attempt, error_extensions
from kml.dev.bridge.events import (
    header_extension_name,
    java_float,
    percent_encode,
    rfc3339_millis,
)
from kml.dev.bridge.offsets import OffsetTracker
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


def test_header_names_and_values():
    assert header_extension_name("X-Trace_Id.9") == "kafkaheaderxtraceid9"
    assert percent_encode('a b"%é') == "a%20b%22%25%C3%A9"
    assert rfc3339_millis(1_700_000_000_000) == "2023-11-14T22:13:20.000Z"
    assert [java_float(x, False) for x in (1e10, 2.0, 1e-5)] == ["1.0E10", "2.0", "1.0E-5"]


def test_dead_letter_data_is_cut_at_1024_bytes():
    ext = error_extensions(
        "http://x", Attempt(status=500, body=b"a" * 2000, headers={"Kne-Why": "w"})
    )
    assert len(ext["knativeerrordata"]) == 1368  # Base64 of 1024 bytes
    assert ext["why"] == "w" and ext["knativeerrorcode"] == "500"


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
