"""Attack artifacts built with real Keras, TensorFlow and h5py, in a spawned child process.

Each function returns what an attacker would send (a Keras JSON config or a ``.keras`` file as
Base64). They run in the test's own Keras child so TensorFlow never loads into pytest.
"""

from __future__ import annotations

import base64
import io
import tempfile
import zipfile
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
    return _tiny().to_json()


def tiny_keras_bytes() -> bytes:
    """The tiny model as a compiled ``.keras`` file."""
    model = _tiny()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.keras"
        model.save(path)
        return path.read_bytes()


def tfsm_model_json(saved_model_dir: str) -> str:
    """A model whose second layer is a ``TFSMLayer`` over a real SavedModel at that path.

    The SavedModel's graph is code of the attacker's choosing (here: ``x * 2``); loading it is
    what the Keras advisory calls arbitrary code execution bypassing safe mode.
    """
    import keras
    import tensorflow as tf

    class Payload(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def serve(self, x):
            return {"out": x * 2.0}

    payload = Payload()
    tf.saved_model.save(payload, saved_model_dir, signatures={"serving_default": payload.serve})
    layer = keras.layers.TFSMLayer(saved_model_dir, call_endpoint="serving_default")
    return keras.Sequential([keras.Input((4,)), layer]).to_json()


def lambda_model_json() -> str:
    import keras

    return keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2)]).to_json()


def _first_kernel(f) -> str:
    """The HDF5 path of the first Dense kernel (4 x 3 float32, 48 bytes)."""
    import h5py

    found: list[str] = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.shape == (4, 3) and not found:
            found.append(name)

    f.visititems(visit)
    return found[0]


def _with_weights(rewrite) -> str:
    """The tiny ``.keras`` file with its ``model.weights.h5`` changed by ``rewrite(h5file)``."""
    import h5py

    raw = tiny_keras_bytes()
    src = zipfile.ZipFile(io.BytesIO(raw))
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "w.h5"
        weights.write_bytes(src.read("model.weights.h5"))
        with h5py.File(weights, "r+") as f:
            rewrite(f)
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as dst:
            for name in ("metadata.json", "config.json"):
                dst.writestr(name, src.read(name))
            dst.writestr("model.weights.h5", weights.read_bytes())
    return base64.b64encode(out.getvalue()).decode()


def external_dataset_keras_b64(secret_file: str) -> str:
    """The first kernel's data stored in another file (HDF5 external storage): a file read."""

    def rewrite(f) -> None:
        name = _first_kernel(f)
        shape, dtype = f[name].shape, f[name].dtype
        del f[name]
        f.create_dataset(name, shape=shape, dtype=dtype, external=[(secret_file, 0, 48)])

    return _with_weights(rewrite)


def external_link_keras_b64(other_h5: str) -> str:
    """The first kernel replaced by a link into another HDF5 file."""
    import h5py

    def rewrite(f) -> None:
        name = _first_kernel(f)
        with h5py.File(other_h5, "w") as other:
            other.create_dataset("kernel", data=f[name][()])
        del f[name]
        f[name] = h5py.ExternalLink(other_h5, "/kernel")

    return _with_weights(rewrite)


def huge_shape_keras_b64() -> str:
    """A kernel dataset declaring 2**40 float32 (4 TiB) in a chunked, never-written layout."""

    def rewrite(f) -> None:
        name = _first_kernel(f)
        del f[name]
        f.create_dataset(name, shape=(2**20, 2**20), dtype="float32", chunks=(1, 1024))

    return _with_weights(rewrite)


def missing_allowlisted() -> list[str]:
    """Allowlisted classes and functions that the installed Keras does not resolve."""

    from keras.src.saving import serialization_lib

    from functions.register.allowlist import CLASSES, FUNCTIONS

    missing = []
    for module, names in CLASSES.items():
        for name in sorted(names):
            try:
                found = serialization_lib._retrieve_class_or_fn(
                    name, None, module, obj_type="class", full_config={}, custom_objects={}
                )
            except (TypeError, ValueError):
                found = None
            if found is None:
                missing.append(f"{module}.{name}")
    for module, names in FUNCTIONS.items():
        for name in sorted(names):
            try:
                found = serialization_lib._retrieve_class_or_fn(
                    name, "function", module, obj_type="function", full_config={}, custom_objects={}
                )
            except (TypeError, ValueError):
                found = None
            if not callable(found):
                missing.append(f"{module}.{name} (function)")
    return missing
