"""Request coalescing: concurrent requests are predicted together in one model call.

Each caller enqueues its rows and blocks; one worker thread takes the first waiting item, adds
whatever else arrives within ``max_wait_s`` (up to ``max_rows`` rows), calls the model once on
the concatenation and hands each caller its slice. When every caller in flight is already in the
batch it does not wait at all, so a lone client pays no batching delay.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import numpy as np

from kafkaml.errors import KmlError, Unavailable

Outputs = list[np.ndarray]
"""One array per model output, each with the batch on axis 0."""

PredictFn = Callable[[np.ndarray], Outputs]

log = logging.getLogger("kml.infer")


class PredictionFailed(KmlError):
    """The model raised on a batch: a server fault, retried by KafkaSource."""

    status, kind = 500, "prediction_failed"


@dataclass
class _Item:
    x: np.ndarray
    future: Future = field(default_factory=Future)

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


class MicroBatcher:
    """Coalesce concurrent ``predict`` calls into batched calls of ``predict_fn``."""

    def __init__(
        self,
        predict_fn: PredictFn,
        *,
        max_rows: int = 256,
        max_wait_s: float = 0.002,
        on_batch: Callable[[int], None] = lambda rows: None,
    ) -> None:
        self._predict_fn = predict_fn
        self._max_rows = max_rows
        self._max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._carry: _Item | None = None
        self._in_flight = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._dead = False

    def predict(self, x: np.ndarray, timeout_s: float = 60.0) -> Outputs:
        """The model's outputs for the rows of ``x``, computed in a batch with other callers."""
        if x.shape[0] == 0:
            raise ValueError("nothing to predict: zero rows")
        item = _Item(x)
        with self._lock:
            if self._dead:
                raise Unavailable("the micro-batcher stopped")
            if self._stopped:
                raise Unavailable("the model is shutting down")
            self._in_flight += 1
            self._start_once()
        try:
            self._queue.put(item)
            return item.future.result(timeout=timeout_s)
        except FutureTimeout:
            raise Unavailable(f"prediction took longer than {timeout_s:.0f}s") from None
        finally:
            with self._lock:
                self._in_flight -= 1

    @property
    def alive(self) -> bool:
        """False once the worker thread has died: readiness must turn red, not hang requests."""
        return not self._dead

    def close(self) -> None:
        with self._lock:
            self._stopped = True
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- worker -------------------------------------------------------------------------------
    def _start_once(self) -> None:
        if self._thread is None:  # started lazily: after a gunicorn fork, in the worker
            self._thread = threading.Thread(target=self._run, name="kml-batcher", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._carry if self._carry is not None else self._queue.get()
            self._carry = None
            if first is None:
                return
            items = [first]
            try:
                items = self._collect(first)
                self._dispatch(items)
            except Exception as e:  # never let one bad batch kill the thread every caller needs
                log.exception("micro-batch failed", extra={"fields": {"requests": len(items)}})
                _fail(items, PredictionFailed(f"batching failed: {type(e).__name__}"))
            except BaseException:  # the thread is going down: nobody may wait for it in vain
                with self._lock:
                    self._stopped = self._dead = True
                log.critical("micro-batcher stopped", extra={"fields": {"requests": len(items)}})
                _fail(items, Unavailable("the micro-batcher stopped"))
                self._drain()
                raise

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                _fail([item], Unavailable("the micro-batcher stopped"))

    def _collect(self, first: _Item) -> list[_Item]:
        items, rows = [first], first.rows
        deadline = time.monotonic() + self._max_wait_s
        while rows < self._max_rows:
            with self._lock:
                everyone_here = len(items) >= self._in_flight
            try:
                if everyone_here:
                    nxt = self._queue.get_nowait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        nxt = self._queue.get_nowait()
                    else:
                        nxt = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if nxt is None:
                self._carry = None
                self._queue.put(None)
                break
            if rows + nxt.rows > self._max_rows or not _compatible(first.x, nxt.x):
                self._carry = nxt
                break
            items.append(nxt)
            rows += nxt.rows
        return items

    def _dispatch(self, items: list[_Item]) -> None:
        x = items[0].x if len(items) == 1 else np.concatenate([i.x for i in items])
        try:
            outputs = run_model(self._predict_fn, x)
        except KmlError as e:
            for item in items:
                item.future.set_exception(e)
            return
        start = 0
        for item in items:
            end = start + item.rows
            item.future.set_result([out[start:end] for out in outputs])
            start = end
        self._on_batch(int(x.shape[0]))


def run_model(predict_fn: PredictFn, x: np.ndarray) -> Outputs:
    """``predict_fn(x)``, checked: the model's own error is a 500 naming its kind (never its
    traceback), and outputs must have a row per input row."""
    try:
        outputs = predict_fn(x)
    except KmlError:
        raise
    except Exception as e:
        raise PredictionFailed(
            f"the model failed on a batch of {len(x)}: {type(e).__name__}"
        ) from None
    if any(len(out) != len(x) for out in outputs):
        raise PredictionFailed(f"the model returned outputs that do not match {len(x)} rows")
    return outputs


def _fail(items: list[_Item], error: Exception) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(error)


def _compatible(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape[1:] == b.shape[1:] and a.dtype == b.dtype


def split_rows(outputs: Sequence[np.ndarray]) -> list:
    """JSON-ready predictions, one per row: a list for one output, a list of lists for several."""
    if len(outputs) == 1:
        return outputs[0].tolist()
    per_output = [o.tolist() for o in outputs]
    return [list(row) for row in zip(*per_output, strict=True)]
