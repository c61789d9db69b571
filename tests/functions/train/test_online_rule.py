"""Online training's pure parts: Kafka-ML's improvement rule, exact windows, the online control
message as Kafka-ML's OnlineRawSink writes it."""

from __future__ import annotations

import json
import time

import pytest

from functions.train.windows import metric_key, should_promote, window_ranges
from kafkaml.wire import InvalidControlMessage, OffsetRange, parse_control_message
from tests.functions.train.online_control import online_control

ONLINE = online_control("live-digits", description="online")


@pytest.mark.parametrize(
    "candidate,promoted,change,improvement,expected",
    [
        (0.5, None, "up", 0.05, True),  # the first window promotes
        (None, None, "up", 0.05, False),  # nothing scored: nothing to promote
        (0.80, 0.70, "up", 0.05, True),
        (0.74, 0.70, "up", 0.05, False),  # better, but not by the improvement
        (0.60, 0.70, "up", 0.05, False),
        (0.30, 0.40, "down", 0.05, True),
        (0.37, 0.40, "down", 0.05, False),
        (0.50, 0.40, "down", 0.05, False),
        (0.40, 0.40, "down", 0.0, True),  # improvement 0: as good is good enough
    ],
)
def test_promotion_follows_kafka_mls_improvement_rule(
    candidate, promoted, change, improvement, expected
):
    assert should_promote(candidate, promoted, change, improvement) is expected


def test_metric_names_map_kafka_mls_val_prefix():
    assert metric_key("val_accuracy") == "accuracy" and metric_key("loss") == "loss"


def test_windows_are_the_offsets_beyond_the_cursor():
    ranges = window_ranges("t", {"0": 5, "1": 3}, {0: 9, 1: 3, 2: 4}, None)
    assert ranges == [OffsetRange("t", 0, 5, 9), OffsetRange("t", 2, 0, 4)]
    capped = window_ranges("t", {"0": 5}, {0: 9, 1: 4}, 6)
    assert capped == [OffsetRange("t", 0, 5, 9), OffsetRange("t", 1, 0, 2)]
    assert window_ranges("t", {"0": 9}, {0: 9}, None) == []


def test_online_control_message_as_online_raw_sink_writes_it():
    msg = parse_control_message(json.dumps(ONLINE).encode(), bytes([7]))
    assert (msg.deployment_id, msg.topic, msg.incremental, msg.total_msg) == (
        "7",
        "live-digits",
        True,
        None,
    )
    assert msg.online == {
        "stream_timeout": 60000,
        "monitoring_metric": "val_loss",
        "change": "down",
        "improvement": 0.05,
        "indefinite": False,
        "window_records": None,
    }
    fields = {"stream_timeout": -1, "monitoring_metric": "val_accuracy", "change": "up"}
    msg = parse_control_message(json.dumps({**ONLINE, **fields}).encode(), b"7")
    assert msg.online["stream_timeout"] == -1 and msg.online["change"] == "up"


def test_bad_online_fields_are_named():
    bad = {**ONLINE, "topic": "t:0:0:5", "change": "sideways", "stream_timeout": -5}
    bad["improvement"] = "lots"
    with pytest.raises(InvalidControlMessage) as e:
        parse_control_message(json.dumps(bad).encode(), b"7")
    text = "; ".join(e.value.problems)
    for field in ("topic:", "change:", "stream_timeout:", "improvement:"):
        assert field in text


def test_the_local_bridge_ticks_train_like_the_pingsource(tmp_path):
    """The bridge's ticker posts a ``kml.stream.tick`` CloudEvent to kml-train every interval."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from kafkaml.events import STREAM_TICK, parse_http
    from kafkaml.settings import Settings
    from kml.dev.bridge.runner import Bridge

    received, tokens = [], []

    class Train(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            received.append(parse_http(dict(self.headers), body))
            tokens.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Train)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = Settings.from_env().replace(state_dir=str(tmp_path), auth_token="kml_tick")
        url = f"http://127.0.0.1:{server.server_port}"
        bridge = Bridge(settings, fixed_urls={"kml-train": url}, tick_interval_s=0.2)
        ticker = threading.Thread(target=bridge._tick_loop, daemon=True)
        ticker.start()
        deadline = time.monotonic() + 10
        while len(received) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        bridge._stop.set()
        ticker.join(5)
    finally:
        server.shutdown()
    assert len(received) >= 2
    assert {e.type for e in received} == {STREAM_TICK}
    assert len({e.id for e in received}) == len(received)  # each tick is a new event
    assert set(tokens) == {"Bearer kml_tick"}  # access control is on: train refuses anonymous
