"""KafkaSource's delivery rules: one test per rule, real Kafka, recording sinks.

Success below 300; 5xx/404/408/409/429, connection errors and timeouts retried with
exponential or linear backoff (no jitter, Retry-After ignored); Knative's defaults and their
no-merge rule; the dead-letter sink's extensions; contiguous commits; ordered and unordered.
"""

from __future__ import annotations

import base64
import logging
import uuid

import pytest
from confluent_kafka import Consumer

from kml.dev.bridge.sources import DeliveryPolicy, parse_kafka_source
from tests.kml.dev.bridge_helpers import (
    DROP,
    Recorder,
    committed,
    create_topic,
    eventually,
    kafka_sink,
    kafka_source,
    produce,
    start_bridge,
)

pytestmark = pytest.mark.integration

DLS = {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "dls"}


@pytest.fixture
def env(stack, tmp_path):
    """Starts bridges and recorders for one test and stops them all afterwards."""
    started: list = []

    class Env:
        topic = f"t-{uuid.uuid4().hex[:10]}"
        bootstrap = stack.kafka_bootstrap

        def recorder(self, *args, **kwargs) -> Recorder:
            rec = Recorder(*args, **kwargs)
            started.append(rec)
            return rec

        def bridge(self, docs, urls, commit_interval_s=0.3):
            b = start_bridge(stack, tmp_path / uuid.uuid4().hex[:6], docs, urls, commit_interval_s)
            started.append(b)
            return b

        def records(self, values, partitions=1, **extra):
            create_topic(self.bootstrap, self.topic, partitions)
            produce(self.bootstrap, self.topic, [{"value": v, **extra} for v in values])

    yield Env()
    for thing in reversed(started):
        thing.stop() if hasattr(thing, "consumers") else thing.close()


def statuses(*codes: int):
    """A script answering ``codes[attempt - 1]`` to each event (200 after the list)."""
    return lambda req, n: (codes[n - 1] if n <= len(codes) else 200, {}, b"")


def gaps(reqs) -> list[float]:
    return [round(b.at - a.at, 3) for a, b in zip(reqs, reqs[1:], strict=False)]


def test_row_success_is_any_status_below_300_and_the_reply_is_discarded(env):
    answers = iter([200, 201, 202, 204, 299])
    sink = env.recorder(
        lambda req, n: (
            next(answers),
            {"ce-type": "reply", "ce-id": "r", "ce-source": "/r", "ce-specversion": "1.0"},
            b"reply body",
        )
    )
    env.records([b"a", b"b", b"c", b"d", b"e"])
    env.bridge(
        [kafka_source("ok", [env.topic], "sink", group="g-ok-" + env.topic)], {"sink": sink.url}
    )
    sink.wait_for(5)
    eventually(
        lambda: committed(env.bootstrap, "g-ok-" + env.topic, env.topic) == [5],
        what="offset 5 committed",
    )
    assert len(sink.received) == 5  # no retry of any 2xx, and the reply went nowhere


@pytest.mark.parametrize("code", [500, 502, 503, 504, 404, 408, 409, 429])
def test_row_retried_codes_5xx_404_408_409_429(env, code):
    sink = env.recorder(statuses(code, code))
    env.records([b"x"])
    env.bridge([kafka_source("retry", [env.topic], "sink")], {"sink": sink.url})
    reqs = sink.wait_for(3)
    assert [r.ce["id"] for r in reqs] == ["partition:0/offset:0"] * 3


def test_row_connection_errors_are_retried(env):
    sink = env.recorder(lambda req, n: DROP if n == 1 else (200, {}, b""))
    env.records([b"x"])
    env.bridge([kafka_source("conn", [env.topic], "sink")], {"sink": sink.url})
    assert len(sink.wait_for(2)) == 2


def test_row_timeouts_are_retried(env):
    sink = env.recorder(lambda req, n: (-2, {"sleep": "1.5"}, b"") if n == 1 else (200, {}, b""))
    env.records([b"x"])
    delivery = {"retry": 2, "backoffDelay": "PT0.01S", "timeout": "PT0.5S"}
    env.bridge([kafka_source("slow", [env.topic], "sink", delivery=delivery)], {"sink": sink.url})
    first, second = sink.wait_for(2)
    assert 0.45 <= second.at - first.at < 1.4  # the second attempt did not wait for the answer


@pytest.mark.parametrize("code", [400, 401, 403, 410, 413, 422, 302])
def test_row_other_3xx_4xx_go_straight_to_the_dead_letter_sink(env, code):
    headers = {"Location": "http://127.0.0.1:1/"} if code == 302 else {}
    sink = env.recorder(lambda req, n: (code, headers, b""))
    dls = env.recorder()
    env.records([b"x"])
    env.bridge(
        [kafka_source("dl", [env.topic], "sink", dead_letter=DLS)],
        {"sink": sink.url, "dls": dls.url},
    )
    dead = dls.wait_for(1)[0]
    assert len(sink.received) == 1
    assert dead.ce["knativeerrorcode"] == str(code)


def test_row_retry_after_is_ignored(env):
    sink = env.recorder(lambda req, n: (503 if n == 1 else 200, {"Retry-After": "30"}, b""))
    env.records([b"x"])
    env.bridge([kafka_source("ra", [env.topic], "sink")], {"sink": sink.url})
    first, second = sink.wait_for(2, timeout=10)
    assert second.at - first.at < 2


def test_row_backoff_exponential_is_delay_times_2_to_the_n_without_jitter(env):
    sink = env.recorder(statuses(500, 500, 500))
    env.records([b"x"])
    delivery = {"retry": 3, "backoffPolicy": "exponential", "backoffDelay": "PT0.1S"}
    env.bridge([kafka_source("exp", [env.topic], "sink", delivery=delivery)], {"sink": sink.url})
    got = gaps(sink.wait_for(4))
    for gap, want in zip(got, [0.2, 0.4, 0.8], strict=True):
        assert want <= gap < want + 0.15, got


def test_row_backoff_linear_is_delay_times_n_without_jitter(env):
    sink = env.recorder(statuses(500, 500, 500))
    env.records([b"x"])
    delivery = {"retry": 3, "backoffPolicy": "linear", "backoffDelay": "PT0.1S"}
    env.bridge([kafka_source("lin", [env.topic], "sink", delivery=delivery)], {"sink": sink.url})
    got = gaps(sink.wait_for(4))
    for gap, want in zip(got, [0.1, 0.2, 0.3], strict=True):
        assert want <= gap < want + 0.15, got


def test_row_no_delivery_means_10_retries_exponential_pt0_3s_timeout_600s(env):
    doc = kafka_source("defaults", [env.topic], "sink", delivery=None)
    assert parse_kafka_source(doc).delivery == DeliveryPolicy(
        retry=10, backoff_policy="exponential", backoff_delay_s=0.3, timeout_s=600.0
    )
    sink = env.recorder(statuses(503, 503))
    env.records([b"x"])
    env.bridge([doc], {"sink": sink.url})
    got = gaps(sink.wait_for(3, timeout=15))
    for gap, want in zip(got, [0.6, 1.2], strict=True):
        assert want <= gap < want + 0.2, got


def test_row_delivery_unset_fields_are_not_merged_with_the_defaults(env):
    only_dls = parse_kafka_source(kafka_source("a", ["t"], "s", delivery={}, dead_letter=DLS))
    assert (
        only_dls.delivery.retry,
        only_dls.delivery.backoff_delay_s,
        only_dls.delivery.timeout_s,
    ) == (0, 0.2, 600.0)
    sink, dls = env.recorder(statuses(500, 500, 500)), env.recorder()
    env.records([b"x"])
    env.bridge(
        [
            kafka_source("nomerge", [env.topic], "sink", delivery={}, dead_letter=DLS),
            kafka_source("retry2", [env.topic], "sink2", delivery={"retry": 2}),
        ],
        {
            "sink": sink.url,
            "dls": dls.url,
            "sink2": (sink2 := env.recorder(statuses(500, 500))).url,
        },
    )
    dls.wait_for(1)
    assert len(sink.received) == 1  # no retry: 0, not 10
    got = gaps(sink2.wait_for(3))
    for gap, want in zip(got, [0.4, 0.8], strict=True):  # 200 ms, exponential
        assert want <= gap < want + 0.15, got


def test_row_dead_letter_sink_gets_knativeerror_extensions_and_kne_headers(env):
    body = bytes(range(256)) * 8  # 2048 bytes
    sink = env.recorder(
        lambda req, n: (422, {"kne-reason": "bad-model", "KNE-Detail": "x y"}, body)
    )
    dls = env.recorder()
    env.records([b"payload"], key=b"dep-1")
    env.bridge(
        [kafka_source("dle", [env.topic], "sink", dead_letter=DLS)],
        {"sink": sink.url, "dls": dls.url},
    )
    dead = dls.wait_for(1)[0]
    assert dead.ce["knativeerrordest"] == sink.url
    assert dead.ce["knativeerrorcode"] == "422"
    assert base64.b64decode(dead.ce["knativeerrordata"]) == body[:1024]
    assert dead.ce["reason"] == "bad-model" and dead.ce["detail"] == "x y"  # not encoded
    assert dead.body == b"payload" and dead.ce["key"] == "dep-1"
    assert dead.ce["id"] == "partition:0/offset:0"


def test_row_dead_letter_after_connection_errors_has_only_the_destination(env):
    sink = env.recorder(lambda req, n: DROP)
    dls = env.recorder()
    env.records([b"x"])
    env.bridge(
        [kafka_source("dlc", [env.topic], "sink", dead_letter=DLS)],
        {"sink": sink.url, "dls": dls.url},
    )
    dead = dls.wait_for(1)[0]
    assert len(sink.received) == 3  # 1 + retry 2
    assert dead.ce["knativeerrordest"] == sink.url
    assert "knativeerrorcode" not in dead.ce and "knativeerrordata" not in dead.ce


def test_row_dead_letter_kafka_sink_receives_a_binary_mode_kafka_cloudevent(env):
    dlq = env.topic + "-dlq"
    create_topic(env.bootstrap, dlq)
    sink = env.recorder(lambda req, n: (400, {}, b'{"error": "bad"}'))
    env.records([b"payload"], key=b"k1")
    ref = {"apiVersion": "eventing.knative.dev/v1alpha1", "kind": "KafkaSink", "name": "dlq"}
    env.bridge(
        [kafka_sink("dlq", dlq), kafka_source("dlk", [env.topic], "sink", dead_letter=ref)],
        {"sink": sink.url},
    )
    consumer = Consumer(
        {
            "bootstrap.servers": env.bootstrap,
            "group.id": "read-" + dlq,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([dlq])
    try:
        msg = eventually(lambda: consumer.poll(0.5), what="a record on the dead-letter topic")
    finally:
        consumer.close()
    headers = {k: v.decode() for k, v in msg.headers()}
    assert msg.value() == b"payload" and msg.key() == b"k1"
    assert headers["ce_knativeerrorcode"] == "400"
    assert base64.b64decode(headers["ce_knativeerrordata"]) == b'{"error": "bad"}'
    assert headers["ce_id"] == "partition:0/offset:0" and headers["ce_specversion"] == "1.0"


def test_row_offsets_highest_contiguous_finished_offset_is_committed(env):
    sink = env.recorder(hold=lambda req: req.ce["knativekafkaoffset"] == "1")
    env.records([b"0", b"1", b"2", b"3", b"4"])
    group = "g-contig-" + env.topic
    env.bridge(
        [kafka_source("contig", [env.topic], "sink", ordering="unordered", group=group)],
        {"sink": sink.url},
    )
    sink.wait_for(5)
    eventually(
        lambda: committed(env.bootstrap, group, env.topic) == [1],
        what="commit stops before the unfinished offset 1",
    )
    sink.release.set()
    eventually(lambda: committed(env.bootstrap, group, env.topic) == [5], what="commit 5")


def test_row_offsets_are_committed_on_rebalance(env):
    sink = env.recorder()
    env.records([b"0", b"1", b"2"], partitions=2, partition=1)
    group = "g-rebal-" + env.topic
    env.bridge(
        [kafka_source("rebal", [env.topic], "sink", group=group)],
        {"sink": sink.url},
        commit_interval_s=3600,
    )  # only a rebalance can commit here
    sink.wait_for(3)
    other = Consumer(
        {
            "bootstrap.servers": env.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    other.subscribe([env.topic])

    def rebalanced() -> bool:
        other.poll(0.2)  # joining the group makes the bridge give up partitions
        return committed(env.bootstrap, group, env.topic, 2)[1] == 3

    try:
        eventually(rebalanced, what="offset 3 of partition 1 committed on rebalance")
    finally:
        other.close()


def test_row_finished_after_retries_run_out_without_dead_letter_sink_dropped_and_logged(
    env, caplog
):
    caplog.set_level(logging.ERROR, logger="kml.bridge")
    sink = env.recorder(lambda req, n: (500 if req.body == b"bad" else 200, {}, b""))
    env.records([b"bad", b"good"])
    group = "g-drop-" + env.topic
    env.bridge([kafka_source("drop", [env.topic], "sink", group=group)], {"sink": sink.url})
    eventually(lambda: committed(env.bootstrap, group, env.topic) == [2], what="both finished")
    assert [r.body for r in sink.received] == [b"bad"] * 3 + [b"good"]
    assert any(
        "dropped" in r.getMessage() and getattr(r, "fields", {}).get("offset") == 0
        for r in caplog.records
    )


def test_row_ordered_keeps_one_event_in_flight_per_partition(env):
    sink = env.recorder(lambda req, n: (503 if req.body == b"p0-0" else 200, {}, b""))
    dls = env.recorder()
    create_topic(env.bootstrap, env.topic, 2)
    produce(
        env.bootstrap,
        env.topic,
        [{"value": f"p{p}-{i}".encode(), "partition": p} for p in (0, 1) for i in range(3)],
    )
    delivery = {"retry": 3, "backoffDelay": "PT0.1S"}
    env.bridge(
        [kafka_source("ord", [env.topic], "sink", delivery=delivery, dead_letter=DLS)],
        {"sink": sink.url, "dls": dls.url},
    )
    reqs = sink.wait_for(9)
    p0 = [r.body for r in reqs if r.body.startswith(b"p0")]
    assert p0 == [b"p0-0"] * 4 + [b"p0-1", b"p0-2"]  # the failing event blocked its partition
    last_p1 = max(r.at for r in reqs if r.body.startswith(b"p1"))
    assert last_p1 < max(r.at for r in reqs if r.body == b"p0-0")  # ... and only its partition
    assert sink.max_in_flight <= 2


def test_row_unordered_pauses_polling_at_50_in_flight_but_adds_whole_poll_batches(env):
    """Polling stops once 50 are in flight; the next poll's whole batch (up to 50) is sent at
    once, so 49 + 50 = 99 can be in flight, never more."""
    sink = env.recorder(hold=lambda req: True)
    env.records([str(i).encode() for i in range(300)])
    env.bridge(
        [kafka_source("unord", [env.topic], "sink", ordering="unordered")], {"sink": sink.url}
    )
    sink.wait_for(50)
    paused_at = sink.settled()
    assert 50 <= paused_at <= 99 and len(sink.received) == paused_at  # polling paused
    sink.let_through(paused_at - 49)  # 49 left in flight: the bridge polls again
    eventually(lambda: len(sink.received) > paused_at, what="a new poll batch in flight")
    again = sink.settled()
    assert 50 < again <= 99  # a whole batch joined the 49, and polling paused again
    assert len(sink.received) == paused_at + again - 49
    sink.release.set()
    sink.wait_for(300)
    assert sink.max_in_flight <= 99
