"""Keras work the register tests need, run in a spawned child (TensorFlow stays out of pytest)."""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path


def _tiny():
    import keras

    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, activation="relu"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )


def tiny_model_json() -> str:
    """A 4 -> 3 -> 2 classifier's ``model.to_json()`` (23 parameters)."""
    return _tiny().to_json()


def lambda_model_json() -> str:
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2)])
    return model.to_json()


def tiny_keras_b64(compiled: bool) -> str:
    """The tiny model saved as a ``.keras`` file, Base64; compiled ones carry their compile spec."""
    model = _tiny()
    if compiled:
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.keras"
        model.save(path)
        return base64.b64encode(path.read_bytes()).decode()


def custom_layer_json() -> str:
    """The tiny model with its first Dense swapped for a class from a user package."""
    config = json.loads(tiny_model_json())
    layer = config["config"]["layers"][1]
    layer["module"], layer["class_name"] = "mypackage.layers", "MyDense"
    return json.dumps(config)
