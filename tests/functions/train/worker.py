"""Runs in a spawned child process: everything that imports TensorFlow.

TensorFlow and LiteRT cannot share a process and the infer tests load LiteRT in the pytest
process, so the train app (through ``app.test_client()``) and the batch entry run here.
"""

from __future__ import annotations

import json
from typing import Any

from kafkaml.settings import Settings

_CLIENTS: dict[Settings, Any] = {}


def post(settings: Settings, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
    """POST one delivery to the train app; (status, JSON body)."""
    from functions.train.app import create_app

    client = _CLIENTS.get(settings)
    if client is None:
        client = _CLIENTS[settings] = create_app(settings).test_client()
    if settings.auth_token:  # as the bridge delivers (the test client patch is not here)
        headers = {"Authorization": f"Bearer {settings.auth_token}", **headers}
    reply = client.post("/", headers=headers, data=body)
    return reply.status_code, json.loads(reply.data or b"null")


def batch(settings: Settings, event_path: str) -> int:
    """The batch entry's exit status for an event file."""
    from functions.train.__main__ import run

    return run(event_path, settings)


def digits_model_json(dense: int = 32) -> str:
    """A small Dense classifier for 8x8 digits, as ``model.to_json()`` gives it."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((8, 8)),
            keras.layers.Rescaling(1 / 16),
            keras.layers.Flatten(),
            keras.layers.Dense(dense, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    return model.to_json()
