"""The live views' summaries: run progress from results events, predictions in a window."""

from __future__ import annotations

import json
from dataclasses import dataclass

from functions.dashboard.live import PredictionWindow, RunProgress, curves_from_history
from kafkaml import events
from kafkaml.events import new_event, to_kafka_structured


@dataclass
class Record:
    raw: bytes
    stamp_ms: int = 1_700_000_000_000
    raw_key: bytes | None = None

    def value(self) -> bytes:
        return self.raw

    def key(self) -> bytes | None:
        return self.raw_key

    def timestamp(self) -> tuple[int, int]:
        return (1, self.stamp_ms)


def result(type_: str, run_id: str, **data) -> Record:
    value, _ = to_kafka_structured(
        new_event(type_, "/tests", {"run_id": run_id, **data}, subject=run_id)
    )
    return Record(value)


def epoch(run_id: str, n: int, loss: float, model: str = "digits") -> Record:
    return result(
        events.TRAINING_PROGRESS,
        run_id,
        model=model,
        epoch=n,
        epochs=3,
        metrics={"loss": loss, "val_loss": loss + 0.1},
    )


def test_progress_keeps_every_epoch_per_model_in_order_and_the_end_of_the_run():
    progress = RunProgress()
    for record in (epoch("r1", 2, 0.5), epoch("r1", 1, 0.9), epoch("r2", 1, 2.0)):
        progress.handle(record)
    run = progress.of("r1")
    assert run["status"] == "running"
    assert run["models"]["digits"]["epochs"] == 3
    assert [p["epoch"] for p in run["models"]["digits"]["points"]] == [1, 2]
    assert run["models"]["digits"]["points"][0]["metrics"] == {"loss": 0.9, "val_loss": 1.0}
    progress.handle(epoch("r1", 3, 0.2))
    progress.handle(result(events.TRAINING_COMPLETED, "r1", status="succeeded"))
    assert progress.of("r1")["status"] == "succeeded"
    assert len(progress.of("r1")["models"]["digits"]["points"]) == 3
    assert progress.of("unknown") == {"status": None, "reason": None, "models": {}}


def test_a_retried_run_shows_its_new_attempt():
    progress = RunProgress()
    progress.handle(epoch("r", 1, 0.9))
    progress.handle(result(events.TRAINING_FAILED, "r", status="failed", reason="broker gone"))
    assert progress.of("r")["status"] == "failed"
    assert progress.of("r")["reason"] == "broker gone"
    progress.handle(epoch("r", 1, 0.7))
    again = progress.of("r")
    assert again["status"] == "running" and again["reason"] is None
    assert again["models"]["digits"]["points"] == [
        {"epoch": 1, "metrics": {"loss": 0.7, "val_loss": 0.7 + 0.1}}
    ]


def test_other_event_types_on_the_results_topic_are_ignored():
    progress = RunProgress()
    progress.handle(result(events.MODEL_REGISTERED, "r"))
    assert progress.of("r")["status"] is None


def test_history_reads_as_live_progress():
    curves = curves_from_history({"loss": [0.9, 0.5], "val_loss": [1.0, 0.6]})
    assert curves == {
        "epochs": 2,
        "points": [
            {"epoch": 1, "metrics": {"loss": 0.9, "val_loss": 1.0}},
            {"epoch": 2, "metrics": {"loss": 0.5, "val_loss": 0.6}},
        ],
    }


def prediction(values, second: int = 0, key: bytes = b"k") -> Record:
    return Record(json.dumps({"values": values}).encode(), 1_700_000_000_000 + second, key)


def test_a_classifier_window_counts_predicted_classes_over_the_last_records_only():
    window = PredictionWindow(size=4)
    rows = [[0.9, 0.1, 0.0], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.0, 0.1, 0.9], [0.1, 0.6, 0.3]]
    for i, row in enumerate(rows):
        window.handle(prediction(row, i, f"key-{i}".encode()))
    summary = window.summary()
    assert summary["kind"] == "classes"
    assert summary["total"] == 4  # the first record left the window
    assert summary["counts"] == [0, 3, 1]
    assert summary["recent"][0] == {
        "time": 1_700_000_000.004,
        "key": "key-4",
        "predicted": 1,
        "score": 0.6,
    }


def test_a_regressor_window_gives_the_values_in_time():
    window = PredictionWindow(size=10)
    window.handle(prediction([1.5], 0))
    window.handle(prediction(2.5, 1000))
    window.handle(Record(b'{"not": "a prediction"}'))
    summary = window.summary()
    assert summary["kind"] == "values"
    assert summary["values"] == [[1_700_000_000.0, 1.5], [1_700_000_001.0, 2.5]]
    assert summary["total"] == 2
