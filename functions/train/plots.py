"""PNG plots of a training result: confusion matrix and learning curves (matplotlib Agg)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Counts ``[true, predicted]`` over classes 0..max label."""
    k = int(max(y_true.max(initial=0), y_pred.max(initial=0))) + 1
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    return matrix


def confusion_matrix_png(matrix: np.ndarray, title: str) -> bytes:
    k = matrix.shape[0]
    fig = Figure(figsize=(max(4, k * 0.6), max(3.5, k * 0.55)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true", title=title)
    threshold = matrix.max() / 2 if matrix.size else 0
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    str(matrix[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if matrix[i, j] > threshold else "black",
                )
    return _png(fig)


def curves_png(history: Mapping[str, Sequence[float]], title: str) -> bytes:
    """One panel per metric, training and validation curves over epochs."""
    names = [n for n in history if not n.startswith("val_")]
    fig = Figure(figsize=(5 * max(1, len(names)), 3.5), layout="constrained")
    for i, name in enumerate(names or ["loss"]):
        ax = fig.add_subplot(1, max(1, len(names)), i + 1)
        for key, label in ((name, "train"), (f"val_{name}", "validation")):
            values = history.get(key)
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
        ax.set(xlabel="epoch", title=f"{title}: {name}")
        ax.legend()
    return _png(fig)


def stream_png(windows: Sequence[Mapping], metric: str, title: str) -> bytes:
    """An online stream's ``metric`` per window: the frozen model (the first promoted one), the
    online stream's promoted model (scored before each window trains: test-then-train) and the
    candidate, with each promotion marked."""
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    ax = fig.add_subplot()
    xs = [int(w.get("index", i)) for i, w in enumerate(windows)]

    def series(key: str) -> list[float]:
        return [np.nan if w.get(key) is None else float(w[key]) for w in windows]

    ax.plot(
        xs,
        series("baseline"),
        marker="s",
        lw=4,
        alpha=0.5,
        color="0.45",
        label="frozen (first promoted)",
    )
    ax.plot(xs, series("promoted"), marker="o", color="#1f6feb", label="online (promoted)")
    ax.plot(xs, series("candidate"), ls="--", marker=".", color="#cf222e", label="candidate")
    promoted = [
        (x, w.get("candidate")) for x, w in zip(xs, windows, strict=True) if w.get("promote")
    ]
    if promoted:
        ax.scatter(
            [p[0] for p in promoted],
            [np.nan if p[1] is None else p[1] for p in promoted],
            s=160,
            facecolors="none",
            edgecolors="#1a7f37",
            linewidths=2,
            label=f"promotion ({len(promoted)})",
            zorder=3,
        )
    ax.set(xlabel="window", ylabel=metric, title=title)
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _png(fig)
