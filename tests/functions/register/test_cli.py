"""``kml models | configurations | deployments`` against a register function served over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner
from werkzeug.serving import make_server

from functions.register.app import create_app
from kafkaml.errors import Conflict, Unauthorized, Unavailable, ValidationFailed
from kml.cli import app as kml
from kml.client import RegisterClient
from kml.dev.procs import free_port
from tests.functions.register.conftest import COMPILE

pytestmark = pytest.mark.integration

MODEL_PY = """
import keras

NAME = "{name}"
COMPILE = {{"optimizer": "adam", "loss": "mse", "metrics": ["mae"]}}


def build_model():
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
"""


@pytest.fixture(scope="module")
def register_url(stack):
    settings = stack.replace(max_body_bytes=2 * 1024 * 1024)
    server = make_server("127.0.0.1", free_port(), create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


@pytest.fixture
def run_kml(register_url, stack, monkeypatch, tmp_path):
    monkeypatch.setenv("KML_REGISTER_URL", register_url)
    monkeypatch.setenv("KML_AUTH_TOKEN", stack.auth_token)  # the session's token, as a user's
    monkeypatch.setenv("KML_STATE_DIR", str(tmp_path / "state"))
    from kml.commands import common

    monkeypatch.setattr(common.console, "width", 250)
    monkeypatch.setattr(common.err_console, "width", 250)
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(kml, list(args), catch_exceptions=False)

    return run


def test_register_list_show_configure_deploy(run_kml, model_json, tmp_path, unique):
    path = tmp_path / f"digits-{unique}.json"
    path.write_text(json.dumps({"keras_json": model_json, "compile": COMPILE}))
    r = run_kml("models", "register", str(path), "--description", "tiny")
    assert r.exit_code == 0, r.output
    assert f"registered digits-{unique} version 1 (23 parameters" in r.output
    bare = tmp_path / "bare.json"
    bare.write_text(model_json)
    r = run_kml(
        "models",
        "register",
        str(bare),
        "--name",
        f"digits-{unique}",
        "--compile",
        json.dumps(COMPILE),
    )
    assert r.exit_code == 0 and "version 2" in r.output, r.output
    r = run_kml("models", "list")
    assert r.exit_code == 0 and f"digits-{unique}" in r.output and "1,2" in r.output
    r = run_kml("models", "show", f"digits-{unique}", "--version", "1")
    assert r.exit_code == 0 and "Dense" in r.output and "tiny" in r.output
    r = run_kml("configurations", "create", f"c-{unique}", f"digits-{unique}@1")
    assert r.exit_code == 0 and f"digits-{unique}@1" in r.output, r.output
    r = run_kml(
        "deployments",
        "create",
        "--configuration",
        f"c-{unique}",
        "--epochs",
        "3",
        "--id",
        f"7{unique}",
        "--fit-kwargs",
        '{"validation_freq": 1}',
    )
    assert r.exit_code == 0 and f"deployment 7{unique}" in r.output, r.output
    r = run_kml("deployments", "show", f"7{unique}")
    assert r.exit_code == 0 and "epochs" in r.output and "3" in r.output


def test_refusals_print_every_problem_and_exit_1(run_kml, tmp_path, unique):
    r = run_kml(
        "deployments", "create", "--model", f"ghost-{unique}", "--epochs", "0", "--batch-size", "0"
    )
    assert r.exit_code == 1
    assert "epochs:" in r.output and "batch_size:" in r.output
    assert "Traceback" not in r.output


def test_client_raises_typed_errors(register_url, stack, model_json, unique):
    client = RegisterClient(register_url, token=stack.auth_token)
    definition = {"name": f"e-{unique}", "keras_json": model_json, "compile": COMPILE, "version": 2}
    assert client.register_model(definition)["version"] == 2
    with pytest.raises(Conflict):
        client.register_model(definition)
    with pytest.raises(ValidationFailed) as e:
        client.create_configuration(f"c-{unique}", [f"ghost-{unique}"])
    assert e.value.problems == [f"models: no model 'ghost-{unique}'"]
    assert client.get(f"/models/e-{unique}")["version"] == 2
    with pytest.raises(Unavailable):
        RegisterClient(f"http://127.0.0.1:{free_port()}", timeout_s=2).get("/models")
    with pytest.raises(Unauthorized):
        RegisterClient(register_url).get("/models")  # no token


def test_register_from_python_runs_on_the_client(register_url, stack, tmp_path, unique):
    """In a child process: the CLI imports Keras to build the model, pytest must not."""
    path = tmp_path / "model.py"
    path.write_text(MODEL_PY.format(name=f"py-{unique}"))
    env = {
        **os.environ,
        "KML_REGISTER_URL": register_url,
        "KML_STATE_DIR": str(tmp_path / "state"),
        "KML_AUTH_TOKEN": stack.auth_token,  # a user's token
    }
    done = subprocess.run(
        [sys.executable, "-m", "kml.cli", "models", "register", "--from-python", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"registered py-{unique} version 1 (4 parameters" in done.stdout
    record = RegisterClient(register_url, token=stack.auth_token).get(f"/models/py-{unique}")
    assert record["compile"] == {"optimizer": "adam", "loss": "mse", "metrics": ["mae"]}
