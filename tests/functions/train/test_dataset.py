"""Shuffle and split (pure), and the confusion matrix the artifacts are drawn from."""

from __future__ import annotations

import numpy as np
import pytest

from functions.train.dataset import split
from functions.train.plots import confusion_matrix, confusion_matrix_png, curves_png
from kafkaml.codecs import UndecodableRecord


def test_split_sizes_and_seeded_shuffle_of_a_class_sorted_stream():
    x = np.arange(100, dtype=np.float32).reshape(100, 1)
    y = np.repeat(np.arange(10), 10)  # sorted by class, as a naive producer would send it
    first = split(x, y, validation_rate=0.1, test_rate=0.2, seed=3)
    again = split(x, y, validation_rate=0.1, test_rate=0.2, seed=3)
    other = split(x, y, validation_rate=0.1, test_rate=0.2, seed=4)
    assert first.sizes() == {"train": 70, "validation": 10, "test": 20}
    assert np.array_equal(first.test.x, again.test.x)
    assert not np.array_equal(first.test.x, other.test.x)
    assert len(set(first.test.y.tolist())) >= 6  # every split sees many classes
    together = np.concatenate([first.train.x, first.validation.x, first.test.x]).ravel()
    assert sorted(together.tolist()) == x.ravel().tolist()  # nothing lost or repeated
    assert np.array_equal(first.train.y, first.train.x.ravel().astype(int) // 10)


def test_split_refuses_to_leave_nothing_for_training():
    with pytest.raises(UndecodableRecord, match="nothing to train on"):
        split(np.zeros((2, 1)), np.zeros(2), validation_rate=0.5, test_rate=0.49, seed=0)


def test_confusion_matrix_counts_and_pngs():
    matrix = confusion_matrix(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 2]))
    assert matrix.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 2]]
    assert confusion_matrix_png(matrix, "m")[:4] == b"\x89PNG"
    assert curves_png({"loss": [1.0, 0.5], "val_loss": [1.1, 0.7]}, "m")[:4] == b"\x89PNG"
