"""One inference deployment being served: its spec, its model (loaded in the background), the
micro-batcher in front of the model, its codec and its producer."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from functions.infer.batcher import MicroBatcher, Outputs
from functions.infer.metrics import InferMetrics
from functions.infer.model import Model, conform, fetch_model, load_model, model_name
from kafkaml.errors import KmlError, Unavailable
from kafkaml.settings import Settings

log = logging.getLogger("kml.infer")


@dataclass(frozen=True)
class Loaded:
    """What start-up produces: the inference spec and its model, ready to predict."""

    spec: dict[str, Any]
    model: Model


Loader = Callable[[Settings], Loaded]


def load_from_storage(settings: Settings) -> Loaded:
    """Read the spec from the registry, fetch the run's model into the cache and load it."""
    from storage.registry import Registry
    from storage.signed import SignedReader

    registry = Registry(SignedReader.from_settings(settings))  # no boto3 client on cold start
    spec = registry.get_inference(settings.inference_id)
    file = fetch_model(registry, spec, settings.model_cache_dir)
    log.info(
        "loading model",
        extra={
            "fields": {
                "inference": settings.inference_id,
                "run": spec["run_id"],
                "runtime": file.runtime,
                "path": str(file.path),
            }
        },
    )
    return Loaded(spec, load_model(file, cache_size=settings.infer_interpreter_cache))


class InferenceService:
    """The model behind a readiness gate; ``predict`` batches concurrent callers together."""

    def __init__(
        self,
        settings: Settings,
        metrics: InferMetrics,
        loader: Loader = load_from_storage,
        producer_factory: Callable[[Settings], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._loader = loader
        self._producer_factory = producer_factory
        self._loaded: Loaded | None = None
        self._batcher: MicroBatcher | None = None
        self._codec: Any = None
        self._producer: Any = None
        self._problem = "the model is loading"
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- start-up -----------------------------------------------------------------------------
    def start(self) -> None:
        """Load the model in a background thread, retrying with backoff until it works."""
        self._thread = threading.Thread(
            target=self._load_until_done, name="kml-model-load", daemon=True
        )
        self._thread.start()

    def wait_ready(self, timeout_s: float) -> bool:
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self._loaded is not None

    def _load_until_done(self) -> None:
        delay = 1.0
        while True:
            started = time.perf_counter()
            try:
                loaded = self._loader(self.settings)
                codec = _codec_for(loaded.spec)
            except Exception as e:  # report the kind, retry: storage may come back
                reason = e.message if isinstance(e, KmlError) else type(e).__name__
                self._problem = f"model not loaded: {reason}"
                log.error(
                    "model load failed; retrying",
                    extra={
                        "fields": {
                            "inference": self.settings.inference_id,
                            "reason": reason,
                            "retry_in_s": delay,
                        }
                    },
                )
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            took = time.perf_counter() - started
            self._codec = codec
            self._batcher = MicroBatcher(
                loaded.model.predict,
                max_rows=self.settings.infer_max_batch,
                max_wait_s=self.settings.infer_batch_wait_ms / 1000,
                on_batch=self.metrics.observe_batch,
            )
            self._loaded = loaded
            self.metrics.model_loaded(loaded.model.runtime, took)
            log.info(
                "model ready",
                extra={
                    "fields": {
                        "inference": self.settings.inference_id,
                        "runtime": loaded.model.runtime,
                        "input_shape": loaded.model.input_shape,
                        "load_s": round(took, 3),
                    }
                },
            )
            return

    # -- serving ------------------------------------------------------------------------------
    def ready(self) -> None:
        """Raise 503 until the model is loaded (the readiness probe and every request)."""
        if self._loaded is None:
            raise Unavailable(self._problem, inference=self.settings.inference_id)
        if self._batcher is not None and not self._batcher.alive:
            raise Unavailable("the micro-batcher stopped", inference=self.settings.inference_id)

    @property
    def loaded(self) -> Loaded:
        self.ready()
        assert self._loaded is not None
        return self._loaded

    @property
    def spec(self) -> dict[str, Any]:
        return self.loaded.spec

    @property
    def codec(self) -> Any:
        self.ready()
        return self._codec

    def conform(self, x: np.ndarray) -> np.ndarray:
        """``x`` as the model's input (422 naming the shapes when it cannot be)."""
        return conform(x, self.loaded.model)

    def predict(self, x: np.ndarray) -> Outputs:
        """Outputs for already conformed rows; coalesced with concurrent callers."""
        self.ready()
        assert self._batcher is not None
        return self._batcher.predict(x, timeout_s=self.settings.request_timeout_s)

    def serves(self, name: str) -> bool:
        """Whether ``name`` (KServe's model name) is this deployment's id or its model's name."""
        spec = self.spec
        return name in {spec["id"], model_name(spec["model"])}

    def producer(self) -> Any:
        """The Kafka producer, created on first use (HTTP-only use never connects to Kafka)."""
        with self._lock:
            if self._producer is None:
                if self._producer_factory is None:
                    from functions.infer.producer import DeliveringProducer

                    self._producer = DeliveringProducer.from_settings(self.settings)
                else:
                    self._producer = self._producer_factory(self.settings)
            return self._producer

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
        if self._producer is not None:
            self._producer.close()


def _codec_for(spec: dict[str, Any]) -> Any:
    from kafkaml.wire import codec_for

    return codec_for(spec["input_format"], spec.get("input_config") or {})
