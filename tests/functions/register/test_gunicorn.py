"""The register function under real gunicorn, reached over HTTP with a binary-mode CloudEvent."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import requests

from kafkaml.events import MODEL_REGISTER, MODEL_REGISTERED, new_event, to_http
from kml.dev.procs import free_port, gunicorn_argv
from tests.functions.register.conftest import model_event

pytestmark = pytest.mark.integration


@pytest.fixture
def served(app_settings, tmp_path):
    port = free_port()
    env = {**os.environ, **app_settings.to_env()}
    argv = gunicorn_argv("register", port, threads=4)
    log = (tmp_path / "gunicorn.log").open("wb")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a loaded CI machine
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/health/readiness", timeout=2).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or too busy to answer in 2 s
                pass
            assert proc.poll() is None, (tmp_path / "gunicorn.log").read_text()
            time.sleep(0.3)
        else:
            pytest.fail(
                "register did not become ready under gunicorn: "
                + (tmp_path / "gunicorn.log").read_text()[-2000:]
            )
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_binary_event_over_http(served, app_settings, model_json, unique):
    headers, body = to_http(
        new_event(MODEL_REGISTER, "/tests/gunicorn", model_event(f"g-{unique}", model_json))
    )
    headers["Authorization"] = f"Bearer {app_settings.auth_token}"
    r = requests.post(f"{served}/", headers=headers, data=body, timeout=300)
    assert r.status_code == 201, r.text
    assert r.headers["ce-type"] == MODEL_REGISTERED
    assert r.json()["name"] == f"g-{unique}" and r.json()["version"] == 1
    shown = requests.get(f"{served}/models/g-{unique}", headers=headers, timeout=10).json()
    assert shown["param_count"] == 23
    bad = requests.post(
        f"{served}/", headers={**headers, "ce-type": "kml.nope"}, data=body, timeout=10
    )
    assert bad.status_code == 400 and "kml.nope" in bad.json()["error"]
