"""Following a stream that has promoted nothing yet, on the real stack: the inference is created
(no run pinned), its gunicorn infer process is not ready (503 naming the stream) while the
stream has no promoted model, and serves the first promoted version once the pointer moves,
within the follow interval and without a restart."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
import requests

from functions.register.handlers import create_inference
from kafkaml.kafka import ensure_topic
from kml.dev.inference import gunicorn_argv, infer_env, threads_for
from kml.dev.procs import Proc, free_port
from storage.registry import Registry
from tests.functions.infer.conftest import MODEL, ROOT

pytestmark = pytest.mark.integration

FOLLOW_S = 0.5
INPUT_CONFIG = {"data_type": "float32", "data_reshape": "8 8"}


def _readiness(url: str) -> tuple[int, dict]:
    try:
        r = requests.get(f"{url}/health/readiness", timeout=2)
    except requests.RequestException:  # not listening yet
        return 0, {}
    return r.status_code, (r.json() if r.content else {})


def test_a_service_following_an_unpromoted_stream_waits_then_serves_the_first_promotion(
    stack, digits, tmp_path_factory
):
    unique = uuid.uuid4().hex[:8]
    registry = Registry.from_settings(stack)
    registry.ensure_ready()
    sid = f"s-{unique}"
    registry.create_stream(
        sid,
        {
            "topic": f"live-{unique}",
            "status": "open",
            "model": f"{MODEL}@1",
            "control_message": {"input_format": "RAW", "input_config": INPUT_CONFIG},
            "windows": [],
            "promoted": None,
            "promotions": 0,
        },
    )
    data = {"stream": sid, "id": f"wait-{unique}"}
    data |= {"input_topic": f"in-{unique}", "output_topic": f"out-{unique}"}
    spec = create_inference(registry, stack, data)  # the register handler: no 409 any more
    assert (spec["stream"], spec["run_id"], spec["model"]) == (sid, None, MODEL)
    assert spec["input_format"] == "RAW" and spec["input_config"] == INPUT_CONFIG

    settings = stack.replace(
        inference_id=spec["id"],
        dlq_topic=f"dlq-{unique}",
        model_cache_dir=str(tmp_path_factory.mktemp("cache")),
        infer_follow_s=FOLLOW_S,
    )
    for topic in (spec["input_topic"], spec["output_topic"], settings.dlq_topic):
        ensure_topic(stack.kafka_bootstrap, topic, 1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = Proc("infer", tmp_path_factory.mktemp("infer-wait"))
    argv = gunicorn_argv(port, threads_for(settings))
    proc.start(argv, env=infer_env(settings, spec["id"]), cwd=ROOT)
    headers = {"Authorization": f"Bearer {stack.auth_token}"}
    predict = f"{url}/v1/models/{spec['id']}:predict"
    body = {"instances": [digits.inputs[0].tolist()]}
    try:
        why = f"model not loaded: stream {sid} has not promoted a model yet"
        deadline = time.monotonic() + 120
        status, answer = _readiness(url)
        while why not in answer.get("error", "") and time.monotonic() < deadline:
            assert status in (0, 503), (status, answer)  # booting, then loading
            time.sleep(0.05)
            status, answer = _readiness(url)
        # several follow intervals with nothing promoted: still not ready, saying why
        waited_until = time.monotonic() + 6 * FOLLOW_S
        while time.monotonic() < waited_until:
            assert status == 503 and why in answer["error"], (status, answer)
            time.sleep(0.1)
            status, answer = _readiness(url)
        r = requests.post(predict, json=body, headers=headers, timeout=10)
        assert r.status_code == 503 and sid in r.json()["error"]
        pid = proc.pid()

        # train's promotion: the window run's artifacts, then the pointer
        run_id, version = f"run-w-{unique}", f"{MODEL}-{sid}@1"
        for filename in ("model.keras", "model.tflite"):
            registry.store.put(
                registry.run_artifact_key(run_id, MODEL, filename),
                (digits.folder / filename).read_bytes(),
            )
        artifact = registry.run_artifact_key(run_id, MODEL, "model.keras")
        _, etag = registry.get_stream(sid)
        pointer = {"model": version, "run_id": run_id, "artifact": artifact, "window": 0}
        registry.update_stream(sid, etag, promoted=pointer, promotions=1)
        promoted_at = time.monotonic()

        while _readiness(url)[0] != 200:
            assert time.monotonic() - promoted_at < 60, proc.log_file.read_text()[-3000:]
            time.sleep(0.02)
        took = time.monotonic() - promoted_at
        print(f"ready {took:.2f}s after the first promotion (follow interval {FOLLOW_S}s)")
        assert proc.pid() == pid  # the same process: loaded without a restart

        r = requests.post(predict, json=body, headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == version
        assert np.allclose(r.json()["predictions"][0], digits.keras_predictions[0], atol=1e-4)
        meta = requests.get(f"{url}/v1/models/{spec['id']}", headers=headers, timeout=10).json()
        assert (meta["model_version"], meta["stream"]) == (version, sid)
    finally:
        proc.stop()
