"""A train process SIGKILLed mid-fit (a pod OOM-killed): the redelivered control message
finishes the run once the dead attempt's lease lapsed. Real broker, real MinIO, real gunicorn."""

from __future__ import annotations

import threading
import time

import pytest

from storage.registry import Registry
from tests.faults.train_helpers import (
    ARTIFACTS,
    Dispatcher,
    Results,
    TrainProcess,
    artifact_keys,
    control_record,
    deliver,
    deployment,
    runs_of,
)

pytestmark = pytest.mark.integration
LEASE_S = 5.0


def test_a_train_process_killed_mid_fit_leaves_no_stuck_run(stack, unique, tmp_path):
    settings = stack.replace(
        control_topic=f"kill-control-{unique}",
        results_topic=f"kill-results-{unique}",
        state_dir=str(tmp_path),
        train_lease_s=LEASE_S,
    )
    registry = Registry.from_settings(settings)
    deployment_id = deployment(registry, unique, epochs=20)
    control, record = control_record(settings, deployment_id, unique, records=400)
    run_id = control.run_id()
    results = Results(settings)
    first = TrainProcess(settings.replace(state_dir=str(tmp_path / "pod-a")))
    second = TrainProcess(settings.replace(state_dir=str(tmp_path / "pod-b")))  # the next pod
    starting = [threading.Thread(target=pod.start) for pod in (first, second)]
    for t in starting:
        t.start()
    for t in starting:
        t.join(150)
    try:
        started = time.monotonic()
        answers: list = []
        sender = threading.Thread(
            target=lambda: answers.append(deliver(first.address, record, settings.auth_token))
        )
        sender.start()
        killed_at = results.wait_for(
            lambda e: e["data"].get("run_id") == run_id and e["data"].get("epoch", 0) >= 3, 120
        )["data"]["epoch"]
        first.kill()
        sender.join(30)
        killed_s = time.monotonic() - started
        stuck, _ = registry.get_run(run_id)
        assert answers and answers[0][0] == 0, answers  # the request died with the process
        assert stuck["status"] == "running" and stuck["attempt"] == 1
    finally:
        first.stop()

    try:  # the dispatcher's retries now reach the other pod
        restarted = time.monotonic()
        dispatcher = Dispatcher(second.address, record, settings.auth_token)
        status, run = dispatcher.until_done(deadline_s=120)
        finished_s = time.monotonic() - restarted
        again = deliver(second.address, record, settings.auth_token)  # a late duplicate
    finally:
        second.stop()
        results.close()

    statuses = dispatcher.statuses()
    completed = results.of(run_id, ".completed")
    keys = artifact_keys(registry, run_id)
    print(
        f"\nSIGKILL at epoch {killed_at}/20 ({killed_s:.1f}s in); redeliveries: "
        f"{statuses} ({statuses.count(409)} x 409 until the {LEASE_S:g}s lease lapsed); "
        f"finished as attempt {run.get('attempt')} {finished_s:.1f}s after the kill; "
        f"runs of the deployment: {len(runs_of(registry, deployment_id))}; artifacts "
        f"{len(keys)}; completed events {len(completed)}; runs stuck: 0"
    )
    assert status == 200 and run["status"] == "succeeded", run
    assert (run["run_id"], run["attempt"], run["previous"]["status"]) == (run_id, 2, "running")
    assert again[0] == 200 and again[1]["updated"] == run["updated"]  # found, not retrained
    assert [r["status"] for r in runs_of(registry, deployment_id)] == ["succeeded"]
    assert len(keys) == ARTIFACTS and len(completed) == 1
