"""One inference deployment being served: its spec, its model (loaded in the background), the
micro-batcher in front of the model, its codec and its producer.

A deployment that follows an online stream also swaps models while it serves: every
``infer_follow_s`` a thread checks the stream's promoted pointer (``functions.infer.follow``);
a new version is fetched and loaded beside the serving one, tried on one row, and only then
made current by a single reference assignment. Nothing waits for the swap: a batch already in
a model call finishes on the model it started on, every batch is one model's (the batcher reads
the current model once per call) and its outputs carry that model's version. A version that
does not load is logged and counted, the old one keeps serving, and it is tried again later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from functions.infer.batcher import MicroBatcher, Outputs
from functions.infer.follow import (
    NotPromotedYet,
    Pointer,
    Retries,
    StreamFollow,
    pointer_of,
    version_label,
    versioned_spec,
)
from functions.infer.metrics import InferMetrics
from functions.infer.model import Model, Versioned, conform, fetch_model, load_model, model_name
from kafkaml.errors import KmlError, Unavailable, ValidationFailed
from kafkaml.settings import Settings

log = logging.getLogger("kml.infer")


@dataclass(frozen=True)
class Loaded:
    """What start-up produces: the inference spec and its model, ready to predict.

    ``model`` is always ``Versioned`` (a bare model is wrapped), so whatever calls it gets
    outputs labelled with ``version``: the spec's ``model_version``, else its run id.
    """

    spec: dict[str, Any]
    model: Model
    follow: StreamFollow | None = field(default=None, compare=False)
    """How to check and load the stream's next version; None when a run is pinned."""

    def __post_init__(self) -> None:
        version = version_label(self.spec)
        if not (isinstance(self.model, Versioned) and self.model.version == version):
            object.__setattr__(self, "model", Versioned(self.model, version))

    @property
    def version(self) -> str:
        return self.model.version  # type: ignore[attr-defined]


Loader = Callable[[Settings], Loaded]


def load_from_storage(settings: Settings) -> Loaded:
    """Read the spec from the registry, fetch the run's model into the cache and load it; a
    spec naming a stream serves the stream's promoted model and follows its pointer."""
    from storage.registry import Registry
    from storage.signed import SignedReader

    reader = SignedReader.from_settings(settings)  # no boto3 client on cold start
    registry = Registry(reader)
    spec = registry.get_inference(settings.inference_id)
    stream_id = spec.get("stream")
    if not stream_id:
        return Loaded(spec, _load_run(registry, settings, spec))
    stream, etag = registry.get_stream(stream_id)
    pointer = pointer_of(stream)
    if pointer is None:
        raise NotPromotedYet(
            f"stream {stream_id} has not promoted a model yet; ready once its first window "
            f"promotes one (checked every {settings.infer_follow_s:g}s)",
            stream_id=stream_id,
        )

    def load(p: Pointer) -> Model:
        return _load_run(registry, settings, versioned_spec(spec, p))

    follow = StreamFollow(stream_id, reader, load, etag=etag)
    return Loaded(versioned_spec(spec, pointer), load(pointer), follow)


def _load_run(registry: Any, settings: Settings, spec: dict[str, Any]) -> Model:
    file = fetch_model(registry, spec, settings.model_cache_dir)
    log.info(
        "loading model",
        extra={
            "fields": {
                "inference": settings.inference_id,
                "run": spec["run_id"],
                "version": version_label(spec),
                "runtime": file.runtime,
                "path": str(file.path),
            }
        },
    )
    return load_model(file, cache_size=settings.infer_interpreter_cache)


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
        self._closed = threading.Event()
        self._retries = Retries()
        self.swaps = 0
        """How many times a new version was made current."""
        self.previous_version: str | None = None

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
            except NotPromotedYet as e:  # expected: look again at the follow interval
                self._problem = f"model not loaded: {e.message}"
                log.info(
                    "waiting for the stream's first promotion",
                    extra={"fields": self._fields(stream=e.details.get("stream_id"))},
                )
                time.sleep(self.settings.infer_follow_s)
                continue
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
                self._predict_current,
                max_rows=self.settings.infer_max_batch,
                max_wait_s=self.settings.infer_batch_wait_ms / 1000,
                on_batch=self.metrics.observe_batch,
            )
            self._loaded = loaded
            self.metrics.model_loaded(loaded.model.runtime, took)
            self.metrics.serving_version(loaded.version)
            log.info(
                "model ready",
                extra={
                    "fields": {
                        "inference": self.settings.inference_id,
                        "runtime": loaded.model.runtime,
                        "version": loaded.version,
                        "input_shape": loaded.model.input_shape,
                        "load_s": round(took, 3),
                    }
                },
            )
            if loaded.follow is not None:
                threading.Thread(target=self._follow, name="kml-model-follow", daemon=True).start()
            return

    def _predict_current(self, x: np.ndarray) -> Outputs:
        """One batch on the model serving now: the reference is read once, so a batch is never
        split across versions, and its outputs carry the version that computed them."""
        loaded = self._loaded
        assert loaded is not None
        return loaded.model.predict(x)

    # -- following a stream -------------------------------------------------------------------
    def _follow(self) -> None:
        while not self._closed.wait(self.settings.infer_follow_s):
            self.follow_once()

    def follow_once(self) -> str:
        """Check the stream's pointer once and swap to a new version when there is one;
        returns what happened (``unchanged``, ``same``, ``waiting``, ``swapped``, ``failed``,
        ``unreachable``). Never raises: the serving model is left as it is on any fault."""
        loaded = self._loaded
        if loaded is None or loaded.follow is None:
            return "unchanged"
        try:
            pointer = loaded.follow.check()
        except Exception as e:  # storage away: keep serving, check again next time
            self.metrics.pointer_checked("error")
            log.warning(
                "stream pointer not checked",
                extra={"fields": self._fields(reason=_reason(e), stream=loaded.follow.stream_id)},
            )
            return "unreachable"
        if pointer is None:
            self.metrics.pointer_checked("unchanged")
            return "unchanged"
        self.metrics.pointer_checked("read")
        if pointer.version == loaded.version:
            return "same"
        if not self._retries.due(pointer.version):
            return "waiting"
        return self._swap_to(loaded, pointer)

    def _swap_to(self, old: Loaded, pointer: Pointer) -> str:
        follow = old.follow
        assert follow is not None
        started = time.perf_counter()
        try:
            model = follow.load(pointer)
            new = Loaded(versioned_spec(old.spec, pointer), model, follow)
            _check_replaces(old.model, new.model)
        except Exception as e:  # a version that does not load never serves; the old one does
            retry_in = self._retries.failed(pointer.version)
            # The record changed and was read; forget its ETag so the retry reads it again.
            follow.forget()
            self.metrics.swap_failed()
            log.error(
                "new model version not loaded; serving the old one",
                extra={
                    "fields": self._fields(
                        serving=old.version,
                        version=pointer.version,
                        run=pointer.run_id,
                        reason=_reason(e),
                        retry_in_s=retry_in,
                    )
                },
            )
            return "failed"
        took = time.perf_counter() - started
        self._retries.succeeded(pointer.version)
        self._loaded = new  # the swap: one reference; batches started before keep their model
        self.previous_version = old.version
        self.swaps += 1
        self.metrics.swapped(old.version, new.version, took)
        log.info(
            "model version swapped",
            extra={
                "fields": self._fields(
                    previous=old.version,
                    version=new.version,
                    run=pointer.run_id,
                    runtime=new.model.runtime,
                    load_s=round(took, 3),
                )
            },
        )
        return "swapped"

    def _fields(self, **more: Any) -> dict[str, Any]:
        return {"inference": self.settings.inference_id, **more}

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

    @property
    def following(self) -> dict[str, Any] | None:
        """What ``/v1/models/<name>`` says of the stream followed (None for a pinned run)."""
        loaded = self._loaded
        if loaded is None or loaded.follow is None:
            return None
        checked = loaded.follow.checked_at
        return {
            "stream": loaded.follow.stream_id,
            "check_every_s": self.settings.infer_follow_s,
            "checked_s_ago": None if checked is None else round(time.monotonic() - checked, 3),
            "swaps": self.swaps,
            "previous_version": self.previous_version,
            "failing_versions": self._retries.failing,
        }

    def close(self) -> None:
        self._closed.set()
        if self._batcher is not None:
            self._batcher.close()
        if self._producer is not None:
            self._producer.close()


def _check_replaces(old: Model, new: Model) -> None:
    """422 unless ``new`` takes what ``old`` takes (rows already conformed for the old model
    may reach the new one) and predicts one row: a broken file never becomes current."""
    if tuple(new.input_shape) != tuple(old.input_shape) or new.input_dtype != old.input_dtype:
        raise ValidationFailed(
            "the new version takes other input",
            [
                f"input: {list(new.input_shape)} {new.input_dtype} where the serving version "
                f"takes {list(old.input_shape)} {old.input_dtype}"
            ],
        )
    probe = np.zeros((1, *(d or 1 for d in new.input_shape)), dtype=new.input_dtype)
    outputs = new.predict(probe)
    if not outputs or any(len(o) != 1 for o in outputs):
        raise ValueError("the new version does not answer one row for one row")


def _reason(e: Exception) -> str:
    return e.message if isinstance(e, KmlError) else f"{type(e).__name__}: {str(e)[:200]}"


def _codec_for(spec: dict[str, Any]) -> Any:
    from kafkaml.wire import codec_for

    return codec_for(spec["input_format"], spec.get("input_config") or {})
