"""Register test fixtures: Keras definitions built in a child process, the app, event senders."""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from functions.register.app import create_app
from kafkaml.events import new_event, to_http
from kafkaml.settings import Settings
from storage.registry import Registry
from tests.functions.register import keras_worker

COMPILE = {"optimizer": "adam", "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]}


@pytest.fixture(scope="session")
def keras_child():
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


@pytest.fixture(scope="session")
def model_json(keras_child) -> str:
    return keras_child.submit(keras_worker.tiny_model_json).result(timeout=300)


@pytest.fixture(scope="session")
def keras_call(keras_child):
    """Run a ``keras_worker`` function by name in the child."""
    return lambda name, *args: keras_child.submit(getattr(keras_worker, name), *args).result(
        timeout=300
    )


@pytest.fixture(scope="session")
def registry(stack) -> Registry:
    reg = Registry.from_settings(stack)
    reg.ensure_ready()
    return reg


@pytest.fixture(scope="session")
def app_settings(stack) -> Settings:
    # The operator allows a second inference image, which a spec may then name.
    return stack.replace(
        max_body_bytes=2 * 1024 * 1024,
        namespace="kml",
        infer_images=f"{stack.infer_image},example/infer:dev",
    )


@pytest.fixture
def client(app_settings, registry):
    return create_app(app_settings, registry).test_client()


class Sender:
    """Sends CloudEvents to a Flask test client in either content mode."""

    def __init__(self, client, structured: bool = False) -> None:
        self.client, self.structured = client, structured

    def __call__(self, type_: str, data: Any):
        headers, body = to_http(
            new_event(type_, "/tests/register", data), structured=self.structured
        )
        return self.client.post("/", headers=headers, data=body)


@pytest.fixture(params=["binary", "structured"])
def send(request, client) -> Sender:
    """Both content modes: each test using it runs twice."""
    return Sender(client, structured=request.param == "structured")


@pytest.fixture
def send_binary(client) -> Sender:
    return Sender(client)


def answer(response) -> tuple[str, dict[str, Any]]:
    """The CloudEvent type and data of a binary-mode answer."""
    return response.headers.get("ce-type"), json.loads(response.data)


def model_event(name: str, model_json: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "keras_json": model_json, "compile": COMPILE, **extra}
