"""The same control message delivered 3x at once, to three train processes (three pods, as the
dispatcher's retries and a scaled-out Service would reach them): one run, trained once; the
other deliveries are told to retry (409) and then get that run's answer."""

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
    deployment,
    runs_of,
)

pytestmark = pytest.mark.integration


def test_one_control_message_delivered_three_times_at_once_is_one_run(stack, unique, tmp_path):
    settings = stack.replace(
        control_topic=f"dup-control-{unique}",
        results_topic=f"dup-results-{unique}",
        state_dir=str(tmp_path),
        train_lease_s=10.0,
    )
    registry = Registry.from_settings(settings)
    deployment_id = deployment(registry, unique, epochs=5)
    control, record = control_record(settings, deployment_id, unique, records=300)
    results = Results(settings)
    pods = [TrainProcess(settings.replace(state_dir=str(tmp_path / f"pod{i}"))) for i in range(3)]
    starting = [threading.Thread(target=pod.start) for pod in pods]
    for t in starting:
        t.start()
    for t in starting:
        t.join(150)
    try:
        dispatchers = [
            Dispatcher(pod.address, record, settings.auth_token, delay_s=0.5) for pod in pods
        ]
        barrier, finals = threading.Barrier(3), []

        def deliver(d: Dispatcher) -> None:
            barrier.wait()
            finals.append(d.until_done(deadline_s=120))

        started = time.monotonic()
        threads = [threading.Thread(target=deliver, args=(d,)) for d in dispatchers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        took = time.monotonic() - started
        time.sleep(1.0)  # let the results topic catch up
        run_id = control.run_id()
        completed = results.of(run_id, ".completed")
        progress = results.of(run_id, ".progress")
    finally:
        for pod in pods:
            pod.stop()
        results.close()

    first = sorted(d.answers[0][0] for d in dispatchers)
    runs = runs_of(registry, deployment_id)
    keys = artifact_keys(registry, run_id)
    print(
        f"\n3 concurrent deliveries: first answers {first}; deliveries until 200: "
        f"{[len(d.answers) for d in dispatchers]} (409s: "
        f"{[d.statuses().count(409) for d in dispatchers]}); {took:.1f}s; runs {len(runs)} "
        f"(attempt {runs[0].get('attempt') if runs else '-'}); epochs published "
        f"{len(progress)}; completed events {len(completed)}; artifacts {len(keys)}"
    )
    assert [s for s, _ in finals] == [200, 200, 200]
    assert {b["run_id"] for _, b in finals} == {run_id}
    assert len({b["updated"] for _, b in finals}) == 1  # one record, the same answer
    assert first.count(200) == 1 and first.count(409) == 2  # the others were told to retry
    assert [(r["status"], r["attempt"]) for r in runs] == [("succeeded", 1)]
    assert len(progress) == 5 and len(completed) == 1 and len(keys) == ARTIFACTS
