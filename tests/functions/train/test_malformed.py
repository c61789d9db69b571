"""Malformed or impossible control messages: the right status, and an error naming the problem.

Each message goes through the real control topic and reaches the app as KafkaSource delivers it.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from kafkaml.kafka import ensure_topic, follow
from kafkaml.sink import RawSink
from kafkaml.wire import parse_control_message
from tests.functions.train.conftest import Harness, digits

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(stack, registry, tf_child, model_json):
    """A deployment, a 120-record data topic and a topic whose first 20 offsets were deleted."""
    unique = uuid.uuid4().hex[:10]
    settings = stack.replace(control_topic=f"mcontrol-{unique}", results_topic=f"mres-{unique}")
    harness = Harness(settings, registry, tf_child, model_json, unique)
    deployment = harness.deployment(epochs=1)
    x, y = digits()
    sink = RawSink(
        settings.kafka_bootstrap,
        f"mdata-{unique}",
        deployment,
        data_type="uint8",
        label_type="uint8",
        data_reshape="8 8",
        label_reshape="1",
        test_rate=0.2,
        control_topic=settings.control_topic,
    )
    sink.send_batch(x[:120], y[:120])
    base = sink.close().body()

    deleted = f"mdel-{unique}"
    ensure_topic(settings.kafka_bootstrap, deleted, 1, config={"retention.ms": "3600000"})
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for i in range(50):
        producer.produce(deleted, key=y[i].tobytes(), value=x[i].tobytes(), partition=0)
    assert producer.flush(30) == 0
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    for fut in admin.delete_records([TopicPartition(deleted, 0, 20)]).values():
        fut.result(timeout=30)
    return harness, deployment, base, deleted


OLD_S = 3600.0
"""The age of the malformed control records: far past the arrival grace, so every verdict is
the permanent one (a young record naming what is still on its way is retried instead)."""


def roundtrip(bootstrap: str, topic: str, value: bytes, key: bytes | None, age_s: float = 0.0):
    """Produce one control record (its timestamp ``age_s`` in the past) and consume it back:
    the record KafkaSource would see."""
    offsets = []
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(
        topic,
        value=value,
        key=key,
        timestamp=int((time.time() - age_s) * 1000),
        on_delivery=lambda err, msg: offsets.append(msg.offset()),
    )
    assert producer.flush(30) == 0 and offsets
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "tests"})
    try:
        consumer.assign([TopicPartition(topic, 0, offsets[0])])
        for _ in range(20):
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                return msg
    finally:
        consumer.close()
    raise AssertionError("control record not consumed back")


def _with(base: dict, **changes) -> bytes:
    return json.dumps({**base, **changes}).encode()


def _config(base: dict, **changes) -> dict:
    return {**base["input_config"], **changes}


# (case, value builder, key (None: the deployment), status, text the error must contain)
CASES = [
    ("bad JSON", lambda b, d: b'{"topic": "t:0:0:1", ', None, 400, "not valid JSON"),
    (
        "missing field",
        lambda b, d: json.dumps({k: v for k, v in b.items() if k != "input_format"}).encode(),
        None,
        422,
        "input_format: required",
    ),
    (
        "bad topic string",
        lambda b, d: _with(b, topic="digits:0:zero:10"),
        None,
        422,
        "partition, start and end must be non-negative integers",
    ),
    (
        "unknown format",
        lambda b, d: _with(b, input_format="PARQUET"),
        None,
        422,
        "'PARQUET' is not one of RAW, AVRO, JSON",
    ),
    (
        "bad dtype",
        lambda b, d: _with(b, input_config=_config(b, data_type="str")),
        None,
        422,
        "input_config.data_type: 'str' is not a numeric NumPy dtype",
    ),
    (
        "rates out of range",
        lambda b, d: _with(b, validation_rate=1.5),
        None,
        422,
        "validation_rate: 1.5 is out of range",
    ),
    (
        "rates leave nothing",
        lambda b, d: _with(b, validation_rate=0.5, test_rate=0.5),
        None,
        422,
        "leaves nothing to train on",
    ),
    (
        "total_msg mismatch",
        lambda b, d: _with(b, total_msg=5),
        None,
        422,
        "total_msg: 5 does not match",
    ),
    ("missing key", lambda b, d: _with(b), b"", 422, "key: missing"),
    (
        "unknown deployment",
        lambda b, d: _with(b),
        b"no-such-deployment",
        422,
        "unknown deployment 'no-such-deployment'",
    ),
    (
        "end beyond high watermark",
        lambda b, d: _with(b, topic=b["topic"].rsplit(":", 1)[0] + ":500", total_msg=None),
        None,
        422,
        "is beyond the high watermark",
    ),
    (
        "deleted offsets",
        lambda b, d: _with(b, topic=f"{d}:0:0:50", total_msg=50),
        None,
        422,
        "offsets 0..19 were deleted",
    ),
    (
        "unknown topic",
        lambda b, d: _with(b, topic="never-created-topic:0:0:10", total_msg=10),
        None,
        422,
        "does not exist",
    ),
    (
        "shape mismatch",
        lambda b, d: _with(b, input_config=_config(b, data_reshape="7 7")),
        None,
        400,
        "record 0: value has 64 bytes; expected 49",
    ),
    (
        "incremental with offsets",
        lambda b, d: _with(b, incremental=True),
        None,
        422,
        "must be a bare Kafka topic name when incremental",
    ),
]


@pytest.mark.parametrize("case,build,key,status,text", CASES, ids=[c[0] for c in CASES])
def test_malformed_control_message(env, case, build, key, status, text):
    harness, deployment, base, deleted = env
    value = build(base, deleted)
    record = roundtrip(
        harness.settings.kafka_bootstrap,
        harness.settings.control_topic,
        value,
        deployment.encode() if key is None else key or None,
        age_s=OLD_S,
    )
    reply = harness.deliver(record)
    assert reply.status == status, reply.body
    assert text in json.dumps(reply.body), reply.body
    if reply.body.get("kind") == "unknown_deployment":  # found before any run: none stored
        assert not harness.registry.store.exists(f"runs/{reply.body['run_id']}/status.json")
    elif status in (400, 422) and reply.body.get("run_id"):  # got as far as a run: it failed
        run, _ = harness.registry.get_run(reply.body["run_id"])
        assert run["status"] == "failed" and run["permanent"] is True
        assert text in run["reason"] + json.dumps(run.get("problems"))
        again = harness.deliver(record)  # permanent: same answer, no retraining
        assert (again.status, again.body["error"]) == (status, reply.body["error"])
        assert harness.registry.get_run(run["run_id"])[0]["updated"] == run["updated"]


def test_young_records_naming_what_is_on_its_way_are_retried_then_permanent(env):
    """An unknown deployment and an end above the high watermark, through the real topic: a
    fresh control record is retried (404, 503), the same one produced long ago is a 422 and its
    run is announced failed on the results topic."""
    harness, deployment, base, _ = env
    bootstrap, control = harness.settings.kafka_bootstrap, harness.settings.control_topic
    ghost = _with(base, description="ghost")
    young = harness.deliver(roundtrip(bootstrap, control, ghost, b"not-created-yet"))
    old = harness.deliver(roundtrip(bootstrap, control, ghost, b"not-created-yet", age_s=OLD_S))
    assert (young.status, old.status) == (404, 422), (young.body, old.body)
    assert "still on its way" in young.body["error"] and old.body["kind"] == "unknown_deployment"

    beyond = _with(base, topic=base["topic"].rsplit(":", 1)[0] + ":400", total_msg=None)
    young = harness.deliver(roundtrip(bootstrap, control, beyond, deployment.encode()))
    assert young.status == 503 and "replicating" in young.body["error"], young.body
    old = harness.deliver(roundtrip(bootstrap, control, beyond, deployment.encode(), age_s=OLD_S))
    assert old.status == 422 and "beyond the high watermark" in old.body["error"], old.body
    failed = [
        json.loads(m.value())["data"]
        for m in follow(bootstrap, harness.settings.results_topic, {0: 0}, 3.0)
        if json.loads(m.value())["type"] == "kml.training.failed"
    ]
    by_run = {(f["run_id"], f["error_status"]) for f in failed}
    assert (old.body["run_id"], 422) in by_run and (young.body["run_id"], 503) in by_run
    assert any(f["reason"].startswith("unknown deployment 'not-created-yet'") for f in failed)


def test_data_failures_become_failed_runs(env):
    """Range and decoding problems are found after the claim: the run records them."""
    harness, _, base, deleted = env
    deployment = harness.deployment(epochs=1)
    body = json.loads(_with(base, topic=f"{deleted}:0:0:50", total_msg=50))
    reply = harness.request({**body, "deployment_id": deployment})
    assert reply.status == 422
    msg = parse_control_message(json.dumps(body).encode(), deployment)
    run, _ = harness.registry.get_run(msg.run_id())
    assert run["status"] == "failed" and "were deleted" in run["reason"]


def test_wrong_event_type_and_not_a_cloudevent(env):
    harness = env[0]
    reply = harness.post(
        {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/t", "ce-type": "kml.model.register"},
        b"{}",
    )
    assert reply.status == 400 and "not 'kml.model.register'" in reply.body["error"]
    reply = harness.post({"content-type": "application/json"}, b"{}")
    assert reply.status == 400 and "not a CloudEvent" in reply.body["error"]


def test_running_run_answers_409_and_too_much_work_answers_use_jobsink(env):
    harness, _, base, _ = env
    deployment = harness.deployment(epochs=1)
    value = _with(base, description="in progress elsewhere")
    msg = parse_control_message(value, deployment)
    harness.registry.claim_run(
        msg.run_id(), {"deployment_id": deployment, "lease_expires": 4102444800}
    )
    reply = harness.deliver(
        roundtrip(
            harness.settings.kafka_bootstrap,
            harness.settings.control_topic,
            value,
            deployment.encode(),
        )
    )
    assert reply.status == 409 and "retry later" in reply.body["error"]

    huge = harness.deployment(epochs=1_000_000)
    reply = harness.request({**base, "deployment_id": huge})
    assert reply.status == 422 and reply.body["kind"] == "use_jobsink"
    assert "JobSink" in reply.body["error"]


def test_kafka_down_is_503_and_a_redelivery_retrains(env):
    """Transient: the run fails as retryable; the next delivery takes it over and succeeds."""
    harness, _, base, _ = env
    deployment = harness.deployment(epochs=1)
    down = Harness(
        harness.settings.replace(kafka_bootstrap="127.0.0.1:1", kafka_timeout_s=2),
        harness.registry,
        harness.child,
        harness.model_json,
        harness.unique,
    )
    body = {**base, "deployment_id": deployment}
    reply = down.request(body)
    assert reply.status == 503 and "unreachable" in reply.body["error"]
    run, _ = harness.registry.get_run(reply.body["run_id"])
    assert run["status"] == "failed" and run["permanent"] is False

    retry = harness.request(body)
    assert retry.status == 200 and retry.body["status"] == "succeeded"
    assert retry.body["run_id"] == run["run_id"] and retry.body["attempt"] == 2
