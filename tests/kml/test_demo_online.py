"""``kml demo online``'s pure parts: the drifting stream it publishes, how it counts recovery,
and the stream.png train draws from a stream's windows."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from functions.train.plots import stream_png
from kml.demo_online import AFTER, BEFORE, DRIFT, WINDOW, drifting_stream, recovery


def test_the_labels_are_permuted_from_the_drift_on_and_no_digit_keeps_its_label():
    x, y = drifting_stream()
    assert len(x) == len(y) == (BEFORE + AFTER) * WINDOW
    assert sorted(DRIFT) == list(range(10)) and all(DRIFT[d] != d for d in range(10))
    from kml.demo import digits

    _, true = digits()
    index = np.arange(len(y)) % len(true)
    assert (y[: BEFORE * WINDOW] == true[index[: BEFORE * WINDOW]]).all()
    assert (y[BEFORE * WINDOW :] == DRIFT[true[index[BEFORE * WINDOW :]]]).all()


def test_recovery_counts_the_windows_after_the_drift_until_the_online_accuracy_is_back():
    online = [None, 0.9, 0.9, 0.9] + [0.05, 0.5, 0.8, 0.9, 0.9]
    assert recovery(online) == (0.9, 2)  # 0.8 >= 80% of 0.9, two windows after the drift
    level, never = recovery([None, 0.9, 0.9, 0.9] + [0.05] * AFTER)
    assert never is None


def test_stream_png_draws_every_window_with_or_without_scores():
    windows = [
        {"index": 0, "candidate": 0.9, "promoted": None, "baseline": None, "promote": True},
        {"index": 1, "candidate": 0.1, "promoted": 0.02, "baseline": 0.02, "promote": True},
        {"index": 2, "candidate": None, "promoted": 0.8, "baseline": 0.01, "promote": False},
    ]
    png = stream_png(windows, "val_accuracy", "stream s")
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.width > 400
