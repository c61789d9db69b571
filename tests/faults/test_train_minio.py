"""MinIO stopped during training and started again: the attempt fails with a published reason
(503, transient), the retried delivery takes the run over and succeeds. A private MinIO, so the
session's storage is never disturbed; the session's real broker; the train function under
gunicorn."""

from __future__ import annotations

import threading
import time

import pytest

from kml.dev.minio_server import MinioServer
from kml.dev.procs import free_port
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


def test_minio_restarted_during_training_fails_the_attempt_loudly_and_the_retry_succeeds(
    stack, unique, tmp_path
):
    port = free_port()
    settings = stack.replace(
        control_topic=f"minio-control-{unique}",
        results_topic=f"minio-results-{unique}",
        state_dir=str(tmp_path),
        minio_port=port,
        minio_console_port=free_port(),
        s3_endpoint=f"http://127.0.0.1:{port}",
        train_lease_s=5.0,
    )
    minio = MinioServer(settings)
    minio.start()
    train = TrainProcess(settings)
    results = Results(settings)
    try:
        registry = Registry.from_settings(settings)
        deployment_id = deployment(registry, unique, epochs=16)
        control, record = control_record(settings, deployment_id, unique, records=400)
        run_id = control.run_id()
        train.start()
        answers: list = []
        sender = threading.Thread(
            target=lambda: answers.append(deliver(train.address, record, settings.auth_token))
        )
        sender.start()
        results.wait_for(
            lambda e: e["data"].get("run_id") == run_id and e["data"].get("epoch", 0) >= 2, 120
        )
        minio.stop()  # mid-fit: the heartbeat, then the artifacts find no storage
        down = time.monotonic()
        sender.join(120)
        first_status, first_body = answers[0]
        minio.start()  # the same data directory: every record is back
        outage_s = time.monotonic() - down

        dispatcher = Dispatcher(train.address, record, settings.auth_token)
        status, run = dispatcher.until_done(deadline_s=120)
        failed = results.of(run_id, ".failed")
        keys = artifact_keys(registry, run_id)
        runs = [r["status"] for r in runs_of(registry, deployment_id)]
        print(
            f"\nMinIO down {outage_s:.1f}s from epoch 2: first answer {first_status} "
            f"({str(first_body.get('error'))[:70]}); kml.training.failed: "
            f"{[(e['data']['error_status'], e['data']['permanent']) for e in failed]}; "
            f"retries {dispatcher.statuses()}; finished as attempt {run.get('attempt')}; "
            f"runs {runs}; artifacts {len(keys)}; runs stuck: 0"
        )
    finally:
        results.close()
        train.stop()
        minio.stop()

    assert first_status == 503 and "storage" in first_body["error"], first_body
    assert failed and all(e["data"]["permanent"] is False for e in failed)
    assert failed[0]["data"]["reason"] == first_body["error"]  # the reason, published
    assert status == 200 and run["status"] == "succeeded", run
    assert run["attempt"] == 2 and len(keys) == ARTIFACTS
    assert runs == ["succeeded"]
