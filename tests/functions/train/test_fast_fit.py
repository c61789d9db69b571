"""Training at the speed of the model: steps per execution chosen from the data, results fixed
by the seed, and TensorFlow imported before readiness rather than on the first event."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest

from functions.train.training import STEPS_PER_EXECUTION, steps_per_execution
from tests.functions.train import fit_worker


def test_steps_per_execution_follows_the_data_size():
    assert steps_per_execution(1258, 32) == 32 == STEPS_PER_EXECUTION  # digits: 40 steps
    assert steps_per_execution(100, 32) == 4  # an epoch of 4 steps runs in one call
    assert steps_per_execution(1, 32) == 1
    assert steps_per_execution(0, 32) == 1


def test_same_seed_same_metrics_and_steps_per_execution_changes_no_epoch(tf_child):
    first = tf_child.submit(fit_worker.fit, 3).result(timeout=300)
    again = tf_child.submit(fit_worker.fit, 3).result(timeout=300)
    one_step = tf_child.submit(fit_worker.fit, 3, 1).result(timeout=300)
    assert first["steps_per_execution"] == 32 and one_step["steps_per_execution"] == 1
    assert again == first  # every loss, accuracy and split size to the last bit
    # One progress event per epoch, the same metric names, the same history and results
    # whether one step or 32 run per call.
    assert [e for e, _ in first["progress"]] == [e for e, _ in one_step["progress"]] == [1, 2, 3]
    assert [sorted(m) for _, m in first["progress"]] == [sorted(m) for _, m in one_step["progress"]]
    assert first["history"].keys() == one_step["history"].keys()
    for key, values in first["history"].items():
        assert values == pytest.approx(one_step["history"][key], rel=1e-5, abs=1e-6), key
    assert first["metrics"].keys() == one_step["metrics"].keys()
    assert first["metrics"]["test"] == pytest.approx(one_step["metrics"]["test"], rel=1e-5)


def test_another_seed_gives_other_metrics(tf_child):
    first = tf_child.submit(fit_worker.fit, 3).result(timeout=300)
    other = tf_child.submit(fit_worker.fit, 4).result(timeout=300)
    assert other["history"]["loss"] != first["history"]["loss"]


def test_readiness_stays_503_until_tensorflow_is_imported():
    """A fresh process (no TensorFlow yet): the app answers readiness 503 naming the import,
    and 200 only once TensorFlow is in the process, so the first event does not import it."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
        seen = fresh.submit(fit_worker.readiness_while_starting).result(timeout=360)
    assert seen["tf_before"] is False
    assert seen["created_s"] < 1.0, "the import must not hold up the app's creation"
    assert seen["first"] == 503 and "importing TensorFlow" in seen["first_error"]
    assert seen["last"] == 200 and seen["statuses"] == [200, 503]
    assert seen["tf_when_ready"] is True
