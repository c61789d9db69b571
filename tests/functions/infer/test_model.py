"""Fetching the model into the cache (LiteRT first), conforming inputs, reading Kafka events."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

from functions.infer.kafka_path import input_record
from functions.infer.model import conform, fetch_model, model_name
from kafkaml.errors import InvalidEvent, NotFound, ValidationFailed
from kafkaml.events import Event
from tests.functions.infer.fakes import SPEC, LinearModel


class _Store:
    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.downloads: list[str] = []

    def exists(self, key: str) -> bool:
        return key in self.objects

    def download_file(self, key: str, path: str) -> None:
        self.downloads.append(key)
        Path(path).write_bytes(self.objects[key])


class _Registry:
    def __init__(self, objects: dict[str, bytes]) -> None:
        self.store = _Store(objects)

    def run_artifact_key(self, run_id: str, model: str, filename: str) -> str:
        return f"runs/{run_id}/{model}/{filename}"


def test_litert_is_preferred_and_cached(tmp_path):
    reg = _Registry(
        {"runs/run-1/digits/model.tflite": b"lite", "runs/run-1/digits/model.keras": b"keras"}
    )
    first = fetch_model(reg, SPEC, str(tmp_path))
    again = fetch_model(reg, SPEC, str(tmp_path))
    assert first.runtime == "litert" and first.path.read_bytes() == b"lite"
    assert again == first and reg.store.downloads == ["runs/run-1/digits/model.tflite"]
    assert [p.name for p in first.path.parent.iterdir()] == ["model.tflite"]  # no partials


def test_keras_is_the_fallback_and_a_missing_model_is_named(tmp_path):
    reg = _Registry({"runs/run-1/digits/model.keras": b"keras"})
    assert fetch_model(reg, {**SPEC, "model": "digits@3"}, str(tmp_path)).runtime == "keras"
    with pytest.raises(NotFound, match="run-2"):
        fetch_model(_Registry({}), {**SPEC, "run_id": "run-2"}, str(tmp_path))
    assert model_name("digits@3") == "digits"


def test_conform_reshapes_flat_rows_casts_and_names_bad_shapes():
    model = LinearModel()
    flat = np.arange(128, dtype=np.float64).reshape(2, 64)
    out = conform(flat, model)
    assert out.shape == (2, 8, 8) and out.dtype == np.float32
    with pytest.raises(ValidationFailed) as e:
        conform(np.zeros((1, 63)), model)
    assert "[63]" in e.value.problems[0] and "[8, 8]" in e.value.problems[0]


def test_input_record_reads_knative_kafka_attributes():
    event = Event(
        type="dev.knative.kafka.event",
        id="partition:3/offset:17",
        source="/apis/v1/namespaces/ns/kafkasources/src#my.topic",
        data=b"\x00\x01",
        attributes={
            "key": base64.b64encode(b"k1\xff\x07").decode(),  # a byte-array source's key
            "kafkaheadercontentencoding": "gzip",
            "kafkaheadertraceid": "t-9",
        },
    )
    record = input_record(event)
    assert (record.topic, record.partition, record.offset) == ("my.topic", 3, 17)
    assert record.value == b"\x00\x01" and record.output_key == b"k1\xff\x07"
    assert dict(record.headers) == {"contentencoding": b"gzip", "traceid": b"t-9"}
    keyless = input_record(
        Event(
            type="dev.knative.kafka.event",
            id="partition:0/offset:5",
            source="/x#t",
            attributes={"knativekafkaoffset": "6"},
        )
    )
    assert keyless.output_key == b"t:0:6"  # the knativekafka* extensions win over the id
    with pytest.raises(InvalidEvent):
        input_record(Event(type="kml.inference.request", source="/x"))
    text_key = Event(type="dev.knative.kafka.event", source="/x#t", attributes={"key": "k 1"})
    with pytest.raises(InvalidEvent, match="key-type: byte-array"):
        input_record(text_key)  # a source delivering keys as text would lose bytes
