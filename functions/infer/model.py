"""The trained model: fetched from storage into a local cache, loaded with LiteRT or Keras.

``model.tflite`` is preferred: LiteRT needs no TensorFlow (a small image, a fast cold start).
Without it the ``.keras`` file is loaded with ``safe_mode=True``. TensorFlow and LiteRT must
never share a process, so both are imported lazily and only the chosen one is imported at all.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from functions.infer.batcher import Outputs
from kafkaml.errors import NotFound, ValidationFailed

log = logging.getLogger("kml.infer")

LITERT, KERAS = "litert", "keras"
ARTIFACTS = (("model.tflite", LITERT), ("model.keras", KERAS))
_MAX_BUCKET = 1024
MODEL_VERSION_HEADER = "kml-model-version"
"""The header of every prediction record naming the model version that made it."""


class Model(Protocol):
    runtime: str
    input_shape: tuple[int | None, ...]
    """One instance's shape (no batch axis); ``None`` where the model takes any size."""
    input_dtype: np.dtype

    def predict(self, x: np.ndarray) -> Outputs: ...


@dataclass(frozen=True)
class ModelFile:
    runtime: str
    path: Path


class Labelled(np.ndarray):
    """A model output that knows which model version made it.

    The label rides on the array itself because the outputs of one model call are sliced by
    the micro-batcher (and the event loop's batcher) and handed to each caller: a slice is a
    view, and a view keeps the label (``__array_finalize__``), so whoever writes a prediction
    reads the version of the very call that computed it, never "the current one".
    """

    version: str | None

    def __array_finalize__(self, obj: Any) -> None:
        self.version = getattr(obj, "version", None)


def labelled(outputs: Outputs, version: str) -> Outputs:
    """``outputs`` as views labelled with ``version`` (no copy)."""
    out = []
    for o in outputs:
        view = np.asarray(o).view(Labelled)
        view.version = version
        out.append(view)
    return out


def version_of(outputs: Outputs) -> str | None:
    """The model version that made ``outputs`` (or a slice of them); None when unlabelled."""
    return getattr(outputs[0], "version", None) if len(outputs) else None


def version_header(outputs: Outputs) -> list[tuple[str, bytes]]:
    """The ``kml-model-version`` header of a prediction made by ``outputs``' model."""
    version = version_of(outputs)
    return [] if version is None else [(MODEL_VERSION_HEADER, version.encode())]


class Versioned:
    """A loaded model and the version that names it: its outputs are ``Labelled``.

    An inference deployment serves one ``Versioned`` at a time; one that follows a stream
    swaps it for the next one, and a batch predicted by either carries that model's version.
    """

    def __init__(self, model: Model, version: str) -> None:
        self.model, self.version = model, version
        self.runtime = model.runtime
        self.input_shape = model.input_shape
        self.input_dtype = model.input_dtype

    def predict(self, x: np.ndarray) -> Outputs:
        return labelled(self.model.predict(x), self.version)

    def __getattr__(self, name: str) -> Any:  # the runtime's own extras (``interpreters``)
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)


def model_name(ref: str) -> str:
    """The run's model folder for a spec's ``model`` (``name`` or ``name@version``)."""
    return ref.split("@", 1)[0]


def fetch_model(registry: Any, spec: dict[str, Any], cache_dir: str) -> ModelFile:
    """Download the run's model (LiteRT if there is one, else Keras) unless it is cached."""
    run_id, name = spec["run_id"], model_name(spec["model"])
    store = registry.store
    folder = Path(cache_dir) / run_id / name
    for filename, runtime in ARTIFACTS:
        local = folder / filename
        if local.is_file():  # run artifacts are immutable: a cached file is current
            return ModelFile(runtime, local)
        key = registry.run_artifact_key(run_id, name, filename)
        if store.exists(key):
            folder.mkdir(parents=True, exist_ok=True)
            partial = folder / f".{filename}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
            store.download_file(key, str(partial))
            os.replace(partial, local)  # atomic: other workers never see half a file
            return ModelFile(runtime, local)
    raise NotFound(
        f"run {run_id} has no model.tflite or model.keras for model {name!r}",
        run_id=run_id,
        model=name,
    )


def load_model(file: ModelFile, num_threads: int | None = 1, cache_size: int = 16) -> Model:
    """The model of ``file``; a LiteRT model keeps at most ``cache_size`` interpreters."""
    if file.runtime == LITERT:
        return LiteRtModel(file.path.read_bytes(), num_threads=num_threads, cache_size=cache_size)
    return KerasModel(file.path)


class LiteRtModel:
    """A LiteRT interpreter per power-of-two batch bucket; inputs are zero-padded to the bucket.

    An interpreter is not thread safe and its batch axis is fixed once allocated, so each bucket
    keeps its own, allocated once, and every call holds the lock. A model with dynamic
    dimensions needs one per bucket and instance shape: at most ``cache_size`` are kept (the
    least recently used is dropped), so callers sending ever new shapes cannot fill the memory.
    """

    runtime = LITERT

    def __init__(
        self,
        content: bytes,
        num_threads: int | None = 1,
        cache_size: int = 16,
        interpreter: Callable[[], Any] | None = None,
    ) -> None:
        """``interpreter`` makes a new interpreter (default: LiteRT's over ``content``)."""
        if cache_size < 1:
            raise ValueError(f"KML_INFER_INTERPRETER_CACHE={cache_size} must be at least 1")
        self.cache_size = cache_size
        if interpreter is None:
            from ai_edge_litert.interpreter import Interpreter

            def interpreter() -> Any:
                return Interpreter(model_content=content, num_threads=num_threads)

        self._factory = interpreter
        probe = self._factory()
        inputs = probe.get_input_details()
        if len(inputs) != 1:
            raise ValidationFailed(f"the model takes {len(inputs)} inputs; infer serves one")
        sig = inputs[0].get("shape_signature", inputs[0]["shape"])
        self.input_shape = tuple(None if d < 0 else int(d) for d in sig[1:])
        self.input_dtype = np.dtype(inputs[0]["dtype"])
        self._lock = threading.Lock()
        self._by_bucket: OrderedDict[Any, Any] = OrderedDict()

    def predict(self, x: np.ndarray) -> Outputs:
        with self._lock:
            parts = [self._run(x[i : i + _MAX_BUCKET]) for i in range(0, len(x), _MAX_BUCKET)]
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate(outs) for outs in zip(*parts, strict=True)]

    def _run(self, x: np.ndarray) -> Outputs:
        n = len(x)
        bucket = 1 << max(0, math.ceil(math.log2(n)))
        interpreter, index, outputs = self._interpreter(bucket, x.shape[1:])
        if bucket != n:
            x = np.concatenate([x, np.zeros((bucket - n, *x.shape[1:]), dtype=x.dtype)])
        interpreter.set_tensor(index, x)
        interpreter.invoke()
        return [interpreter.get_tensor(o)[:n] for o in outputs]

    def _interpreter(self, bucket: int, shape: tuple[int, ...]) -> tuple[Any, int, list[int]]:
        """The bucket's interpreter, its input tensor's index and its outputs' (read once:
        the details are rebuilt as dicts on every call, which cost more than a small model)."""
        key = (bucket, shape) if None in self.input_shape else bucket
        kept = self._by_bucket.get(key)
        if kept is None:
            interpreter = self._factory()
            index = interpreter.get_input_details()[0]["index"]
            interpreter.resize_tensor_input(index, [bucket, *shape], strict=False)
            interpreter.allocate_tensors()
            outputs = [o["index"] for o in interpreter.get_output_details()]
            kept = self._by_bucket[key] = (interpreter, index, outputs)
            while len(self._by_bucket) > self.cache_size:
                self._by_bucket.popitem(last=False)
        else:
            self._by_bucket.move_to_end(key)
        return kept

    @property
    def interpreters(self) -> int:
        """How many interpreters are kept now."""
        return len(self._by_bucket)


class KerasModel:
    """The ``.keras`` fallback, called as ``model(x, training=False)`` under a lock."""

    runtime = KERAS

    def __init__(self, path: Path) -> None:
        import keras  # the fallback pays TensorFlow's import; LiteRT deployments never do

        self._model = keras.saving.load_model(str(path), safe_mode=True, compile=False)
        inputs = self._model.inputs
        if len(inputs) != 1:
            raise ValidationFailed(f"the model takes {len(inputs)} inputs; infer serves one")
        self.input_shape = tuple(None if d is None else int(d) for d in inputs[0].shape[1:])
        self.input_dtype = np.dtype(getattr(inputs[0], "dtype", "float32") or "float32")
        self._lock = threading.Lock()

    def predict(self, x: np.ndarray) -> Outputs:
        with self._lock:
            out = self._model(x, training=False)
        outs = out if isinstance(out, (list, tuple)) else [out]
        return [np.asarray(o) for o in outs]


def conform(x: np.ndarray, model: Model) -> np.ndarray:
    """``x`` ([n, ...]) as the model's input: reshaped when only the layout differs, cast.

    A shape that cannot be the model's input is a 422 naming both shapes.
    """
    want = model.input_shape
    got = tuple(x.shape[1:])
    if not _matches(got, want):
        if None in want or math.prod(got) != math.prod(want):
            raise ValidationFailed(
                "instance shape does not fit the model",
                [
                    f"instances: shape {list(got)} ({math.prod(got)} values), the model takes "
                    f"{[d if d is not None else 'any' for d in want]}"
                ],
            )
        x = x.reshape((x.shape[0], *want))
    if x.dtype != model.input_dtype:
        x = x.astype(model.input_dtype)
    return np.ascontiguousarray(x)


def _matches(got: tuple[int, ...], want: tuple[int | None, ...]) -> bool:
    return len(got) == len(want) and all(
        w is None or g == w for g, w in zip(got, want, strict=True)
    )
