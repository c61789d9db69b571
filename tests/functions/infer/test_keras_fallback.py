"""Without model.tflite, infer serves the .keras file (safe_mode) and says so; readiness waits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from tests.functions.infer.conftest import deploy, publish, read_topic, serve
from tests.functions.infer.kafkasource_driver import deliver_topic

pytestmark = pytest.mark.integration


def test_keras_fallback_serves_both_paths_once_ready(stack, digits, tmp_path):
    deployment = deploy(stack, digits, tmp_path / "cache", tflite=False, partitions=1)
    served = serve(deployment, tmp_path / "infer")
    try:
        first_200 = served.statuses.index(200)
        assert 503 in served.statuses[:first_200]  # answered "not ready" while Keras loaded
        meta = served.predict(deployment.id, digits.inputs[:1].tolist())
        assert meta.status_code == 200
        info = requests.get(
            f"{served.url}/v1/models/{deployment.id}", headers=served.headers, timeout=10
        ).json()
        assert info["runtime"] == "keras" and info["input_shape"] == [8, 8]

        picks = list(range(0, 1797, 90))
        r = served.predict(deployment.id, digits.inputs[picks].tolist())
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(
            r.json()["predictions"], digits.keras_predictions[picks], atol=1e-5
        )

        n = 200
        publish(
            stack.kafka_bootstrap,
            deployment.spec["input_topic"],
            [(digits.inputs[i].tobytes(), f"k-{i}".encode(), []) for i in range(n)],
        )
        deliveries = deliver_topic(
            stack.kafka_bootstrap,
            deployment.spec["input_topic"],
            served.url + "/",
            n,
            token=served.token,
            concurrency=16,
        )
        assert [d.status for d in deliveries] == [200] * n
        outputs = read_topic(stack.kafka_bootstrap, deployment.spec["output_topic"], n)
        assert sorted(m.key().decode() for m in outputs) == sorted(f"k-{i}" for i in range(n))
        for m in outputs:
            i = int(m.key().decode()[2:])
            np.testing.assert_allclose(
                json.loads(m.value())["values"], digits.keras_predictions[i], atol=1e-5
            )
        assert 'runtime="keras"' in served.metrics()
    finally:
        served.proc.stop()
