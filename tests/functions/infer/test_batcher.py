"""The micro-batcher: concurrent callers share model calls and each gets its own rows back."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from functions.infer.batcher import MicroBatcher, PredictionFailed, split_rows
from kafkaml.errors import Unavailable
from tests.functions.infer.fakes import LinearModel


def _rows(seed: int, n: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 8, 8), dtype=np.float32)


def test_concurrent_callers_are_batched_and_get_their_own_rows():
    model = LinearModel(delay_s=0.01)
    batcher = MicroBatcher(model.predict, max_rows=64, max_wait_s=0.005)
    inputs = [_rows(i, n=1 + i % 3) for i in range(64)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda x: batcher.predict(x)[0], inputs))
    batcher.close()
    for x, y in zip(inputs, results, strict=True):
        np.testing.assert_allclose(y, model.expected(x), rtol=1e-6)
    assert sum(model.calls) == sum(len(x) for x in inputs)
    assert max(model.calls) > 1 and len(model.calls) < len(inputs)
    assert max(model.calls) <= 64


def test_a_lone_caller_is_not_delayed_by_the_batch_window():
    model = LinearModel()
    batcher = MicroBatcher(model.predict, max_wait_s=5.0)
    import time

    started = time.perf_counter()
    for i in range(5):
        batcher.predict(_rows(i))
    assert time.perf_counter() - started < 1.0
    assert model.calls == [1, 1, 1, 1, 1]
    batcher.close()


def test_one_request_bigger_than_the_batch_limit_is_still_one_call():
    model = LinearModel()
    batcher = MicroBatcher(model.predict, max_rows=8)
    (y,) = batcher.predict(_rows(0, n=50))
    assert y.shape == (50, 10) and model.calls == [50]
    batcher.close()


def test_a_model_failure_reaches_every_caller_of_the_batch_without_its_message():
    model = LinearModel(delay_s=0.02, fail=True)
    batcher = MicroBatcher(model.predict, max_wait_s=0.01)
    errors: list[Exception] = []

    def call(i: int) -> None:
        try:
            batcher.predict(_rows(i))
        except PredictionFailed as e:
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 6
    assert all(
        e.status == 500 and "RuntimeError" in e.message and "boom" not in e.message for e in errors
    )
    batcher.close()


def test_split_rows_gives_one_list_per_row_and_groups_several_outputs():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    b = np.array([[5.0], [6.0]])
    assert split_rows([a]) == [[1.0, 2.0], [3.0, 4.0]]
    assert split_rows([a, b]) == [[[1.0, 2.0], [5.0]], [[3.0, 4.0], [6.0]]]


def test_zero_rows_are_refused():
    batcher = MicroBatcher(LinearModel().predict)
    with pytest.raises(ValueError):
        batcher.predict(np.zeros((0, 8, 8), dtype=np.float32))


def test_a_batch_that_breaks_the_batcher_fails_its_callers_and_the_next_call_still_works():
    model = LinearModel()
    seen: list[int] = []

    def on_batch(rows: int) -> None:  # a metrics callback that raises once
        seen.append(rows)
        if len(seen) == 1:
            raise RuntimeError("metrics backend down")

    batcher = MicroBatcher(model.predict, on_batch=on_batch)
    batcher.predict(_rows(0))  # results are handed out before the callback runs
    assert batcher.alive
    np.testing.assert_allclose(batcher.predict(_rows(1))[0], model.expected(_rows(1)), rtol=1e-6)
    batcher.close()


def test_outputs_that_do_not_match_the_rows_are_a_prediction_failure_not_a_dead_thread():
    calls = {"n": 0}

    def wrong_then_right(x):
        calls["n"] += 1
        return [np.zeros((0, 10))] if calls["n"] == 1 else LinearModel().predict(x)

    batcher = MicroBatcher(wrong_then_right)
    with pytest.raises(PredictionFailed, match="do not match 1 rows"):
        batcher.predict(_rows(0), timeout_s=5)
    assert batcher.alive
    assert batcher.predict(_rows(1), timeout_s=5)[0].shape == (1, 10)
    batcher.close()


def test_a_worker_thread_that_dies_anyway_is_reported_so_readiness_turns_red():
    def exits(x):
        raise SystemExit  # not an Exception: nothing in the worker may swallow it

    batcher = MicroBatcher(exits)
    with pytest.raises(Unavailable, match="micro-batcher stopped"):
        batcher.predict(_rows(0), timeout_s=0.5)
    batcher._thread.join(timeout=5)
    assert not batcher.alive
