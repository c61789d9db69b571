"""What the live views keep: the progress of recent runs, the recent predictions of a topic.

Both are bounded summaries of records a :class:`~functions.dashboard.tails.TopicTail` hands in,
and both are plain objects (a record is anything with ``value()``, ``key()``, ``timestamp()``),
so their logic is tested without a broker. :class:`LiveViews` owns the tails.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from typing import Any

from functions.dashboard.tails import TopicTail, last, since
from kafkaml import events
from kafkaml.errors import Unavailable
from kafkaml.events import STRUCTURED_CONTENT_TYPE, parse_http
from kafkaml.parsing import loads
from kafkaml.settings import Settings

RESULTS_LOOKBACK_S = 6 * 3600.0
"""How far back the results view starts reading: a run page opened mid-run has every epoch."""
MAX_RUNS = 500
"""Runs whose progress is kept (the least recently updated go first)."""
MAX_EPOCHS = 10_000
"""Progress events kept per run and model."""
WINDOW = 200
"""Predictions in the sliding window of an inference deployment's live view."""
MAX_PREDICTION_VIEWS = 8
"""Output topics followed at once (the least recently viewed one stops first)."""


class RunProgress:
    """Per run: every epoch's metrics by model, and how the run ended (from the results topic)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def handle(self, msg: Any) -> None:
        event = parse_http({"content-type": STRUCTURED_CONTENT_TYPE}, msg.value())
        if event.type not in (
            events.TRAINING_PROGRESS,
            events.TRAINING_COMPLETED,
            events.TRAINING_FAILED,
        ):
            return
        data = event.json()
        run_id = str(data.get("run_id") or event.get("subject") or "")
        if not run_id:
            return
        with self._lock:
            run = self._runs.pop(run_id, None) or {"models": {}, "status": None}
            self._runs[run_id] = run
            while len(self._runs) > MAX_RUNS:
                self._runs.popitem(last=False)
            if event.type == events.TRAINING_PROGRESS:
                epochs = run["models"].setdefault(str(data.get("model", "model")), {})
                if len(epochs) < MAX_EPOCHS:
                    # a retried run sends its epochs again: the latest attempt's values win
                    epochs[int(data["epoch"])] = {
                        "epochs": int(data.get("epochs") or 0),
                        "metrics": dict(data.get("metrics") or {}),
                    }
                if run["status"] in (None, "failed"):
                    run["status"], run["reason"] = "running", None
            else:
                run["status"] = data.get("status") or (
                    "succeeded" if event.type == events.TRAINING_COMPLETED else "failed"
                )
                run["reason"] = data.get("reason")

    def of(self, run_id: str) -> dict[str, Any]:
        """``{status, reason, models: {model: {epochs, points: [{epoch, metrics}]}}}``."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                return {"status": None, "reason": None, "models": {}}
            models = {
                name: {
                    "epochs": max((e["epochs"] for e in by_epoch.values()), default=0),
                    "points": [
                        {"epoch": n, "metrics": by_epoch[n]["metrics"]} for n in sorted(by_epoch)
                    ],
                }
                for name, by_epoch in run["models"].items()
            }
            return {"status": run["status"], "reason": run.get("reason"), "models": models}


def curves_from_history(history: dict[str, list[float]]) -> dict[str, Any]:
    """The stored ``history.json`` of a finished model in the same shape as live progress."""
    length = max((len(v) for v in history.values()), default=0)
    points = [
        {"epoch": i + 1, "metrics": {k: v[i] for k, v in history.items() if i < len(v)}}
        for i in range(length)
    ]
    return {"epochs": length, "points": points}


class PredictionWindow:
    """The last ``size`` predictions of one output topic (``{"values": row}`` records)."""

    def __init__(self, size: int = WINDOW) -> None:
        self._lock = threading.Lock()
        self._rows: deque[tuple[float, str, Any]] = deque(maxlen=size)
        self.size = size

    def handle(self, msg: Any) -> None:
        body = loads(msg.value())
        row = body.get("values") if isinstance(body, dict) else None
        if row is None:
            return
        key = (msg.key() or b"").decode("utf-8", errors="backslashreplace")
        with self._lock:
            self._rows.append((msg.timestamp()[1] / 1000.0, key, row))

    def summary(self) -> dict[str, Any]:
        """Classifier (vector rows): counts of each predicted class; else the values in time."""
        with self._lock:
            rows = list(self._rows)
        flat = [(t, k, _flatten(r)) for t, k, r in rows]
        flat = [(t, k, r) for t, k, r in flat if r]
        classifier = bool(flat) and all(len(r) > 1 for _, _, r in flat)
        out: dict[str, Any] = {"window": self.size, "total": len(flat), "recent": []}
        if classifier:
            width = max(len(r) for _, _, r in flat)
            counts = [0] * width
            for _, _, r in flat:
                counts[_argmax(r)] += 1
            out.update(kind="classes", counts=counts)
            recent = [
                {"time": t, "key": k, "predicted": _argmax(r), "score": max(r)} for t, k, r in flat
            ]
        else:
            out.update(kind="values", values=[[t, r[0]] for t, _, r in flat])
            recent = [{"time": t, "key": k, "predicted": r[0], "score": None} for t, k, r in flat]
        out["recent"] = recent[-10:][::-1]
        return out


def _flatten(row: Any) -> list[float]:
    if isinstance(row, (int, float)) and not isinstance(row, bool):
        return [float(row)]
    if isinstance(row, list):
        return [x for item in row for x in _flatten(item)]
    return []


def _argmax(row: list[float]) -> int:
    return max(range(len(row)), key=row.__getitem__)


class LiveViews:
    """The results view (one tail, started on first use) and the prediction views by topic."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.progress = RunProgress()
        self._results: TopicTail | None = None
        self._windows: OrderedDict[str, tuple[TopicTail, PredictionWindow]] = OrderedDict()
        self._lock = threading.Lock()

    def run(self, run_id: str) -> dict[str, Any]:
        with self._lock:
            if self._results is None:
                self._results = TopicTail(
                    self.settings.kafka,
                    self.settings.results_topic,
                    since(RESULTS_LOOKBACK_S),
                    self.progress.handle,
                    self.settings.kafka_timeout_s,
                ).start()
            tail = self._results
        return {**self.progress.of(run_id), "feed_problem": tail.problem}

    def predictions(self, topic: str) -> dict[str, Any]:
        with self._lock:
            found = self._windows.pop(topic, None)
            if found is None:
                window = PredictionWindow()
                tail = TopicTail(
                    self.settings.kafka,
                    topic,
                    last(window.size),
                    window.handle,
                    self.settings.kafka_timeout_s,
                ).start()
                found = (tail, window)
            self._windows[topic] = found
            stale = []
            while len(self._windows) > MAX_PREDICTION_VIEWS:
                stale.append(self._windows.popitem(last=False)[1][0])
        for old in stale:
            old.stop()
        tail, window = found
        return {**window.summary(), "topic": topic, "feed_problem": tail.problem}

    def check(self) -> None:
        """``Unavailable`` when a tail's thread died (readiness turns red, saying why)."""
        with self._lock:
            tails = [self._results] if self._results else []
            tails += [t for t, _ in self._windows.values()]
        dead = [t for t in tails if t.crashed]
        if dead:
            raise Unavailable(f"live view of {dead[0].topic} stopped: {dead[0].crashed}")

    def close(self) -> None:
        with self._lock:
            tails = [self._results] if self._results else []
            tails += [t for t, _ in self._windows.values()]
            self._results, self._windows = None, OrderedDict()
        for tail in tails:
            tail.stop()
