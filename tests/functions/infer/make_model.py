"""Train a tiny Keras classifier on sklearn digits and write what infer serves.

Run in its own process (``python -m tests.functions.infer.make_model OUT``): TensorFlow must not
share a process with LiteRT. Writes ``model.keras``, ``model.tflite`` (TFLiteConverter),
``inputs.npy`` (float32 [n, 8, 8] in [0, 1]), ``labels.npy`` and ``keras_predictions.npy``.
An optional second argument shifts every label by that much (mod 10): another real model, whose
predictions differ from the first one's (a stream's next version, in the follow tests).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(out: Path, epochs: int = 3, shift: int = 0) -> None:
    import keras
    import tensorflow as tf
    from sklearn.datasets import load_digits

    keras.utils.set_random_seed(7)
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32).reshape(-1, 8, 8)
    y = (digits.target.astype(np.int64) + shift) % 10
    model = keras.Sequential(
        [
            keras.Input((8, 8)),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    (out / "model.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    np.save(out / "inputs.npy", x)
    np.save(out / "labels.npy", y)
    np.save(out / "keras_predictions.npy", np.asarray(model.predict_on_batch(x)))


if __name__ == "__main__":
    main(Path(sys.argv[1]), shift=int(sys.argv[2]) if len(sys.argv) > 2 else 0)
