"""Readiness tells the truth: a dead micro-batcher turns the probe red instead of hanging calls."""

from __future__ import annotations

import numpy as np

from functions.infer.app import create_app
from tests.functions.infer.fakes import LinearModel, RecordingProducer, fixed_loader, settings


class ExitingModel(LinearModel):
    def predict(self, x):
        raise SystemExit  # kills the worker thread: nothing may hide that


def test_readiness_turns_red_when_the_batcher_thread_dies():
    app = create_app(
        settings(),
        loader=fixed_loader(ExitingModel()),
        producer_factory=lambda s: RecordingProducer(),
    )
    service = app.extensions["kml.infer"]
    assert service.wait_ready(5)
    client = app.test_client()
    assert client.get("/health/readiness").status_code == 200
    x = np.zeros((1, 8, 8), dtype=np.float32).tolist()
    answer = client.post("/v1/models/digits-1:predict", json={"instances": x})
    assert answer.status_code == 503  # the caller is told at once, not left waiting
    service._batcher._thread.join(timeout=5)
    probe = client.get("/health/readiness")
    assert probe.status_code == 503
    assert "micro-batcher stopped" in probe.get_json()["error"]
    service.close()
