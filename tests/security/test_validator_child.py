"""The validator's child processes as an operator sees them: fresh, empty-handed, never left over.

A child killed under a registration (the OOM killer does exactly this) must give 503, which
KafkaSource retries, not 422, which it dead-letters; a stuck child must be killed with its
process group at the timeout; the child must not hold the S3 secret; and after each of these
the next registration must work.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from functions.register import validator
from functions.register.app import create_app
from kafkaml.events import MODEL_REGISTER
from tests.functions.register.conftest import Sender
from tests.security.conftest import COMPILE

pytestmark = pytest.mark.integration


def _event(name: str, config: str) -> dict:
    return {"name": name, "keras_json": config, "compile": COMPILE}


def _wait_for_children(procs, timeout_s: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := procs.children():
            return found
        time.sleep(0.05)
    pytest.fail("the register app started no validator child")


def test_a_child_killed_under_a_registration_is_503_and_the_next_one_registers(
    send, build, procs, unique
):
    config = build("tiny_model_json")
    killed: list[int] = []
    stop = threading.Event()

    def oom_killer() -> None:  # SIGKILL, as the kernel's OOM killer sends
        while not stop.is_set():
            for pid in procs.children():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                killed.append(pid)
            time.sleep(0.01)

    killer = threading.Thread(target=oom_killer)
    killer.start()
    try:
        r = send(MODEL_REGISTER, _event(f"k-{unique}", config))
    finally:
        stop.set()
        killer.join()
    assert killed, "no validator child was seen"
    assert r.status_code == 503, r.data
    assert r.get_json()["kind"] == "unavailable" and "died" in r.get_json()["error"]
    assert send(MODEL_REGISTER, _event(f"k-{unique}", config)).status_code == 201


def test_a_stuck_child_is_killed_with_its_group_at_the_timeout(
    app_settings, registry, build, procs, unique
):
    config = build("tiny_model_json")
    validator.shutdown()  # no spare from an earlier app: the one this app starts is the one used
    app = create_app(app_settings.replace(register_validate_timeout_s=5), registry)
    send = Sender(app.test_client())
    stuck = _wait_for_children(procs)
    for pid in stuck:
        os.kill(pid, signal.SIGSTOP)  # alive but never answering, like a hung TensorFlow
    started = time.monotonic()
    r = send(MODEL_REGISTER, _event(f"s-{unique}", config))
    took = time.monotonic() - started
    assert r.status_code == 503, r.data
    assert "longer than 5 s" in r.get_json()["error"]
    assert took < 60
    for pid in stuck:
        assert not procs.alive(pid), f"validator child {pid} was left behind"
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # nothing left in its process group either
    send = Sender(create_app(app_settings, registry).test_client())
    assert send(MODEL_REGISTER, _event(f"s-{unique}", config)).status_code == 201


def test_the_child_environment_holds_no_secret(
    app_settings, registry, build, procs, unique, monkeypatch
):
    config = build("tiny_model_json")
    secret = f"not-for-the-validator-{unique}"
    monkeypatch.setenv("KML_S3_SECRET_KEY", secret)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    validator.shutdown()
    send = Sender(create_app(app_settings, registry).test_client())
    children = _wait_for_children(procs)
    for pid in children:
        env = procs.environ(pid)
        values = " ".join(env.values())
        assert secret not in values and app_settings.s3_secret_key not in values
        assert not [k for k in env if k.startswith(("KML_", "AWS_"))], sorted(env)
        assert set(env) <= {
            "HOME",
            "TMPDIR",
            "KERAS_HOME",
            "KERAS_BACKEND",
            "TF_CPP_MIN_LOG_LEVEL",
            "CUDA_VISIBLE_DEVICES",
            "PYTHONPATH",
            "LANG",
            "OPENBLAS_CORETYPE",
            "OPENBLAS_L2_SIZE",
        }, sorted(env)
    assert send(MODEL_REGISTER, _event(f"e-{unique}", config)).status_code == 201
