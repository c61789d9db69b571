"""Runs that cannot get stuck, run identity, and every error in its class: the train handler over
the in-memory store, topics and publisher (no Kafka, no MinIO). The tests that fit a model run
in the TensorFlow child."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from functions.train.__main__ import run as batch_run
from functions.train.app import create_app
from functions.train.artifacts import artifact_folders
from functions.train.service import Trainer
from kafkaml import events
from kafkaml.errors import EXIT_RETRY, Unavailable, is_retried
from kafkaml.events import new_event, to_http
from kafkaml.kafka import RangeRecords
from kafkaml.wire import parse_control_message
from tests.fakes import MemoryTopics, RecordingPublisher
from tests.functions.train.test_service import World


class SlowTopics(MemoryTopics):
    """Kafka that takes ``delay_s`` to read, then fails (``Unavailable``) when ``fail`` is set."""

    def __init__(self, delay_s: float, fail: bool = True) -> None:
        super().__init__()
        self.delay_s, self.fail, self.started = delay_s, fail, threading.Event()

    def __call__(self, settings, ranges) -> RangeRecords:
        self.started.set()
        time.sleep(self.delay_s)
        if self.fail:
            raise Unavailable(f"Kafka at {settings.kafka_bootstrap} unreachable: down")
        return super().__call__(settings, ranges)


def another_pod(world: World) -> World:
    """The same registry and Kafka served by another train process (its own trainer)."""
    trainer = Trainer(world.trainer.settings, world.registry, RecordingPublisher(), world.topics)
    app = create_app(world.trainer.settings, trainer)
    return replace(world, app=app, trainer=trainer, publisher=trainer.publisher)


def held_run(world: World, lease_in_s: float, status: str = "running") -> str:
    """The world's run as another attempt left it: ``status``, lease lapsing in ``lease_in_s``."""
    run_id = world.run_id()
    world.registry.claim_run(
        run_id,
        {
            "deployment_id": world.deployment,
            "attempt": 1,
            "lease_expires": time.time() + lease_in_s,
        },
    )
    if status != "claimed":
        world.registry.update_run(run_id, world.registry.get_run(run_id)[1], status=status)
    return run_id


# -- the lease ------------------------------------------------------------------------------------
def test_a_running_run_whose_lease_lapsed_is_taken_over_by_the_next_delivery():
    """Its attempt died (no heartbeat): the redelivery claims it (attempt 2) instead of 409."""
    world = World.build()
    run_id = held_run(world, lease_in_s=-1)
    world.topics.down = True  # stop right after the takeover, without TensorFlow
    status, body = world.request()
    run, _ = world.registry.get_run(run_id)
    assert status == 503, body
    assert (run["attempt"], run["previous"]["status"]) == (2, "running")
    assert (run["status"], run["permanent"]) == ("failed", False)


def test_the_heartbeat_keeps_a_long_attempt_s_lease_and_a_duplicate_meanwhile_gets_409():
    topics = SlowTopics(delay_s=2.0)
    world = World.build(topics=topics, train_lease_s=0.6)
    replies: list[tuple[int, dict]] = []
    first = threading.Thread(target=lambda: replies.append(world.request()))
    first.start()
    assert topics.started.wait(10)
    time.sleep(1.0)  # the 0.6 s lease would have lapsed twice without renewals
    status, body = another_pod(world).request()
    first.join(30)
    run, _ = world.registry.get_run(world.run_id())
    print(f"\nduplicate during a 2 s read with a 0.6 s lease: {status}; first: {replies[0][0]}")
    assert status == 409 and is_retried(status) and "holds it" in body["error"]
    assert replies[0][0] == 503 and run["attempt"] == 1


def test_an_attempt_whose_run_was_taken_over_stops_without_touching_it():
    topics = SlowTopics(delay_s=1.5)
    world = World.build(topics=topics, train_lease_s=30)
    replies: list[tuple[int, dict]] = []
    first = threading.Thread(target=lambda: replies.append(world.request()))
    first.start()
    assert topics.started.wait(10)
    run_id = world.run_id()
    _, etag = world.registry.get_run(run_id)  # another attempt takes the run over meanwhile
    world.registry.update_run(run_id, etag, status="claimed", attempt=2, owner="other")
    first.join(30)
    run, _ = world.registry.get_run(run_id)
    status, body = replies[0]
    assert status == 409 and body["kind"] == "run_taken_over"
    assert (run["status"], run["attempt"], run["owner"]) == ("claimed", 2, "other")
    assert world.publisher.of_type("failed") == []  # the other attempt reports the outcome


def test_the_batch_entry_answers_75_while_another_attempt_holds_the_run(tmp_path):
    world = World.build()
    run_id = held_run(world, lease_in_s=3600)
    data = {**world.body, "deployment_id": world.deployment}
    path = tmp_path / "event.json"
    headers, body = to_http(new_event(events.TRAINING_REQUEST, "/tests", data), structured=True)
    path.write_bytes(body)
    started = time.monotonic()
    assert batch_run(str(path), world.trainer.settings, world.trainer) == EXIT_RETRY
    assert time.monotonic() - started < 5  # a live lease: no wait, the Job retries later
    assert world.registry.get_run(run_id)[0]["attempt"] == 1


# -- run identity ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change",
    [
        {"test_rate": 0.3},
        {"validation_rate": 0.2},
        {"input_config": {"data_type": "float32", "data_reshape": "2 2", "label_type": "uint8"}},
        {"input_format": "JSON", "input_config": {"data_reshape": "4"}},
    ],
    ids=["test_rate", "validation_rate", "input_config", "input_format"],
)
def test_the_same_ranges_with_other_settings_are_another_run_not_the_old_answer(change):
    world = World.build()
    old = world.run_id()
    world.registry.claim_run(old, {"deployment_id": world.deployment})
    _, etag = world.registry.update_run(old, world.registry.get_run(old)[1], status="running")
    world.registry.update_run(old, etag, status="succeeded", models={"tiny": {}})
    assert world.request()[0] == 200  # the same message: the old run's answer
    world.topics.down = True
    status, body = world.request(**change)
    assert status == 503 and body["run_id"] != old, body  # a new run was started
    again = parse_control_message(
        json.dumps({**world.body, **change}).encode(), None, deployment_id=world.deployment
    )
    assert again.run_id() == body["run_id"]
    same = {**world.body, "description": "another description"}
    assert parse_control_message(json.dumps(same).encode(), b"x").run_id() == (
        parse_control_message(json.dumps(world.body).encode(), b"x").run_id()
    )


# -- errors in their class ------------------------------------------------------------------------
def test_an_end_above_the_high_watermark_is_retried_while_young_then_permanent_and_announced():
    world = World.build()
    beyond = {"topic": "rows:0:0:150", "total_msg": 150}  # 100 records exist
    status, body = world.request(age_s=1, **beyond)
    run, _ = world.registry.get_run(body["run_id"])
    assert status == 503 and "replicating" in body["error"]
    assert (run["status"], run["permanent"]) == ("failed", False)
    status, body = world.request(age_s=60, **beyond)
    run, _ = world.registry.get_run(body["run_id"])
    assert status == 422 and "beyond the high watermark" in body["error"]
    assert (run["status"], run["permanent"], run["attempt"]) == ("failed", True, 2)
    assert [e["status"] for e in world.publisher.of_type("failed")] == [503, 422]


def test_a_deleted_start_is_permanent_even_when_young():
    world = World.build()
    world.topics.partitions[("rows", 0)] = world.topics.partitions[("rows", 0)][:50]
    status, body = world.request(age_s=0, topic="rows:0:0:150", total_msg=150)
    assert status == 503  # only the end is missing: young, so retried
    status, body = world.request(age_s=0, topic="ghost-topic:0:0:10", total_msg=10)
    assert status == 422 and "does not exist" in body["error"]


def test_work_too_long_for_the_http_route_is_announced_as_failed():
    world = World.build(train_record_epoch_budget_s=100.0)
    status, body = world.request()
    assert status == 422 and body["kind"] == "use_jobsink"
    [failed] = world.publisher.of_type("failed")
    assert failed["run_id"] == world.run_id() and "JobSink" in failed["reason"]


def test_artifact_folders_are_unique_per_model_reference_and_stable():
    models = [
        {"name": "m", "version": 1},
        {"name": "m", "version": 2},
        {"name": "m.v1", "version": 1},
        {"name": "m.v1.v1", "version": 3},
        {"name": "other", "version": 5},
    ]
    folders = artifact_folders(models)
    assert folders == ["m.v1", "m.v2", "m.v1.v1", "m.v1.v1.v3", "other"]
    assert artifact_folders(models) == folders and len(set(folders)) == len(models)
    assert artifact_folders([{"name": "m", "version": 4}]) == ["m"]


# -- in the TensorFlow child ----------------------------------------------------------------------
def train_outside_classes() -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    """Labels 0..3 for a model with 3 classes (and a 200 for the same data within them)."""
    world = World.build()
    rows = world.topics.partitions[("rows", 0)]
    world.topics.partitions[("rows", 0)] = [
        (bytes([3 + (i % 2)]), v) for i, (_, v) in enumerate(rows)
    ]
    status, body = world.request()
    return status, body, world.publisher.of_type("failed")


def test_a_label_outside_the_model_s_classes_is_422_naming_it(tf_child):
    status, body, failed = tf_child.submit(train_outside_classes).result(timeout=600)
    assert status == 422, body
    assert body["kind"] == "model_failed"
    assert any(
        "labels (train split): 3, 4 outside model tiny's 3 classes" in p for p in body["problems"]
    ), body
    assert [e["status"] for e in failed] == [422]


def train_three_refs() -> dict[str, Any]:
    """A deployment of m@1, m@2 and a model named m.v1: three folders, three artifact sets."""
    world = World.build()
    model = world.registry.get_model("tiny")
    definition = {k: model[k] for k in ("format", "keras_json", "compile")}
    for name in ("m", "m", "m.v1"):
        world.registry.register_model(name, definition)
    deployment = world.registry.create_deployment(
        {"models": ["m@1", "m@2", "m.v1@1"], "batch_size": 16, "epochs": 1, "seed": 3}
    )["id"]
    status, body = world.request(deployment_id=deployment)
    keys = world.registry.store.list(f"runs/{body.get('run_id')}/")
    return {"status": status, "body": body, "keys": keys}


def test_models_differing_only_by_version_or_a_dot_train_into_their_own_folders(tf_child):
    out = tf_child.submit(train_three_refs).result(timeout=600)
    assert out["status"] == 200, out["body"]
    models = out["body"]["models"]
    assert {f: m["model"] for f, m in models.items()} == {
        "m.v1": "m@1",
        "m.v2": "m@2",
        "m.v1.v1": "m.v1@1",
    }
    folders = {Path(k).parent.name for k in out["keys"] if not k.endswith("status.json")}
    assert folders == {"m.v1", "m.v2", "m.v1.v1"}
    assert sum(k.endswith("/model.keras") for k in out["keys"]) == 3


def lapsing_holder_then_batch(event_path: str) -> dict[str, Any]:
    """A run held by an attempt that died 1.5 s before its lease lapses; the JobSink entry."""
    world = World.build()
    run_id = held_run(world, lease_in_s=1.5)
    data = {**world.body, "deployment_id": world.deployment}
    headers, body = to_http(new_event(events.TRAINING_REQUEST, "/tests", data), structured=True)
    Path(event_path).write_bytes(body)
    started = time.monotonic()
    code = batch_run(event_path, world.trainer.settings, world.trainer)
    return {
        "code": code,
        "waited": time.monotonic() - started,
        "run": world.registry.get_run(run_id)[0],
    }


def test_the_batch_entry_waits_for_a_dead_holder_s_lease_and_finishes_the_run(tf_child, tmp_path):
    out = tf_child.submit(lapsing_holder_then_batch, str(tmp_path / "e.json")).result(600)
    print(f"\nbatch entry after a dead holder: exit {out['code']} in {out['waited']:.1f}s")
    assert out["code"] == 0
    assert out["waited"] >= 1.5
    assert (out["run"]["status"], out["run"]["attempt"]) == ("succeeded", 2)


def test_the_run_id_a_sink_prints_is_the_run_id_train_finds():
    """An integer rate from a sink (0) and the parsed float (0.0) are one run."""
    from kafkaml.wire import ControlMessage

    config = {"data_type": "uint8", "label_type": "uint8"}
    sent = ControlMessage("7", "t:0:0:10", "raw", config, 0, 0.2)
    parsed = parse_control_message(json.dumps(sent.body()).encode(), b"7")
    assert parsed.run_id() == sent.run_id()
