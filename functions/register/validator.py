"""Run model validation in one spawned child process, shared by every app of this process.

Why a child: TensorFlow then never loads into the web worker (it stays small and starts fast),
a definition that crashes Keras kills only the child, and a process that has loaded another
TFLite runtime (tests, local tools) can still register models — the two cannot share a process.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from functions.register.models import ValidatedModel, validate_definition
from kafkaml.errors import KmlError, ValidationFailed

TIMEOUT_S = 180.0
"""First use imports TensorFlow in the child (seconds); a model must validate within this."""

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


def _in_child(data: dict[str, Any]) -> tuple[str, Any]:
    """Runs in the child; errors come back as plain values (KmlError details do not pickle)."""
    try:
        validated, raw = validate_definition(data)
        return "ok", (validated, raw)
    except ValidationFailed as e:
        return "invalid", (e.message, e.problems)
    except KmlError as e:
        return "error", (e.message, e.status)


def _executor() -> ProcessPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        return _pool


def _reset(pool: ProcessPoolExecutor) -> None:
    global _pool
    with _lock:
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False, cancel_futures=True)


def validate(data: dict[str, Any]) -> tuple[ValidatedModel, bytes | None]:
    """``models.validate_definition`` in the child; the same errors, raised here."""
    pool = _executor()
    try:
        kind, value = pool.submit(_in_child, data).result(timeout=TIMEOUT_S)
    except BrokenProcessPool:
        _reset(pool)
        raise ValidationFailed(
            "model validation crashed",
            ["model: loading this definition crashed the validator; it cannot be used"],
        ) from None
    except FutureTimeout:
        _reset(pool)
        raise KmlError(f"model validation took longer than {TIMEOUT_S:.0f} s", status=503) from None
    if kind == "invalid":
        message, problems = value
        raise ValidationFailed(message, problems)
    if kind == "error":
        message, status = value
        raise KmlError(message, status=status)
    return value


def _import_keras() -> str:
    import keras

    return keras.__version__


def warm_up() -> None:
    """Start the child and let it import Keras in the background, so the first model is quick."""
    _executor().submit(_import_keras)


def shutdown() -> None:
    with _lock:
        global _pool
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
