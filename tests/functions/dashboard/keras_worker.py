"""Keras work the dashboard tests need, run in a spawned child (TensorFlow stays out of pytest)."""

from __future__ import annotations


def digits_keras_file(path: str) -> str:
    """A small 8x8-digits classifier (uncompiled) saved as a ``.keras`` file at ``path``."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((8, 8)),
            keras.layers.Rescaling(1 / 16),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.save(path)
    return path
