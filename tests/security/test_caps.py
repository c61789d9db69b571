"""Bounded work: every request over a cap is a 4xx naming the cap and its setting, refused
before the work is done (bodies, instances, scale, epochs, training records and bytes), and
the caches a caller can grow stay bounded."""

from __future__ import annotations

import numpy as np
import pytest

from functions.infer.app import create_app as infer_app
from functions.infer.model import LiteRtModel
from functions.register.app import create_app as register_app
from functions.train import dataset
from kafkaml.errors import PayloadTooLarge, ValidationFailed
from kafkaml.events import DEPLOYMENT_CREATE, INFERENCE_CREATE, new_event, to_http
from kafkaml.settings import Settings
from kafkaml.wire import ControlMessage
from storage.registry import Registry
from tests.access import SESSION_AUTH
from tests.fakes import MemoryStore
from tests.functions.infer.fakes import SPEC, LinearModel, RecordingProducer, fixed_loader

MiB = 1024 * 1024


def test_the_default_body_caps_are_far_below_the_old_32_mib():
    settings = Settings()
    assert settings.max_body_bytes <= 8 * MiB and settings.infer_max_body_bytes <= 4 * MiB


@pytest.fixture(scope="module")
def register():
    settings = Settings(bucket="unit", max_body_bytes=64 * 1024, **SESSION_AUTH)
    return register_app(settings, Registry(MemoryStore("unit"))).test_client()


def send(client, type_: str, data, headers: dict | None = None):
    head, body = to_http(new_event(type_, "/tests/caps", data))
    return client.post("/", headers={**head, **(headers or {})}, data=body)


def test_an_oversized_body_is_413_naming_the_cap_and_unread_without_a_token(register):
    big = {"name": "big", "keras_json": "x" * (64 * 1024 + 1), "compile": {"loss": "mse"}}
    answer = send(register, "kml.model.register", big)
    assert answer.status_code == 413
    body = answer.get_json()
    assert body["setting"] == "KML_MAX_BODY_BYTES" and body["limit"] == 64 * 1024
    assert "KML_MAX_BODY_BYTES" in body["error"]
    anonymous = send(register, "kml.model.register", big, {"Authorization": ""})
    assert anonymous.status_code == 401  # who sent it is asked before the body is read


@pytest.mark.parametrize(
    ("field", "value", "setting"),
    [
        ("target_concurrency", 1000, "KML_INFER_MAX_CONCURRENCY"),
        ("max_scale", 1000, "KML_INFER_MAX_SCALE"),
    ],
)
def test_inference_scale_and_concurrency_above_the_caps_are_422(register, field, value, setting):
    data = {"run_id": "r1", "input_topic": "in", "output_topic": "out", field: value}
    answer = send(register, INFERENCE_CREATE, data)
    assert answer.status_code == 422
    [problem] = answer.get_json()["problems"]
    assert problem.startswith(f"{field}:") and setting in problem


@pytest.mark.parametrize(
    ("field", "value", "setting"),
    [
        ("epochs", 100_000, "KML_TRAIN_MAX_EPOCHS"),
        ("batch_size", 1_000_000, "KML_TRAIN_MAX_BATCH_SIZE"),
    ],
)
def test_epochs_and_batch_size_above_the_caps_are_422(register, field, value, setting):
    answer = send(register, DEPLOYMENT_CREATE, {"models": ["m@1"], field: value})
    assert answer.status_code == 422
    [problem] = answer.get_json()["problems"]
    assert problem.startswith(f"{field}:") and setting in problem


@pytest.fixture
def infer():
    apps = []

    def make(**changes):
        settings = Settings(inference_id=SPEC["id"], dlq_topic="dlq", **SESSION_AUTH, **changes)
        app = infer_app(
            settings,
            loader=fixed_loader(LinearModel()),
            producer_factory=lambda s: RecordingProducer(),
        )
        assert app.extensions["kml.infer"].wait_ready(5)
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        app.extensions["kml.infer"].close()


def test_too_many_instances_is_413_naming_the_cap(infer):
    client = infer(infer_max_instances=8)
    path = f"/v1/models/{SPEC['id']}:predict"
    row = np.zeros(64).tolist()
    assert client.post(path, json={"instances": [row] * 8}).status_code == 200
    over = client.post(path, json={"instances": [row] * 9})
    assert over.status_code == 413
    assert (
        over.get_json()["setting"] == "KML_INFER_MAX_INSTANCES" and "8" in over.get_json()["error"]
    )


def test_an_oversized_predict_body_is_413_naming_infers_own_cap(infer):
    client = infer(infer_max_body_bytes=32 * 1024)
    rows = [np.zeros(64).tolist()] * 200  # about 50 KiB of JSON
    over = client.post(f"/v1/models/{SPEC['id']}:predict", json={"instances": rows})
    assert over.status_code == 413 and "KML_INFER_MAX_BODY_BYTES" in over.get_json()["error"]


def test_a_control_message_over_the_record_cap_is_refused_before_anything_is_read():
    reads = []

    def reader(settings, ranges):
        reads.append(ranges)
        raise AssertionError("nothing may be read")

    msg = ControlMessage(
        deployment_id="d1",
        topic="train:0:0:2000000",
        input_format="RAW",
        input_config={"data_type": "float32", "label_type": "uint8"},
    )
    with pytest.raises(ValidationFailed) as refused:
        dataset.load(Settings(train_max_records=1_000_000), msg, 1, reader)
    assert refused.value.status == 422 and "KML_TRAIN_MAX_RECORDS" in refused.value.problems[0]
    assert reads == []


@pytest.mark.integration
def test_a_run_reading_more_bytes_than_the_cap_stops_with_413(stack, unique):
    from kafkaml.kafka import ConfirmingProducer, ensure_topic
    from kafkaml.wire import parse_topic_ranges

    topic = f"caps-{unique}"
    ensure_topic(stack.kafka_bootstrap, topic, 1)
    producer = ConfirmingProducer(stack.kafka_bootstrap)
    for _ in range(50):
        producer.produce(topic, bytes(1024), b"\x01")
    producer.flush()
    ranges, _ = parse_topic_ranges(f"{topic}:0:0:50")
    assert len(dataset.read_from_kafka(stack, ranges)) == 50  # under the default cap: all
    with pytest.raises(PayloadTooLarge) as stopped:
        dataset.read_from_kafka(stack.replace(train_max_bytes=10 * 1024), ranges)
    assert stopped.value.status == 413 and "KML_TRAIN_MAX_BYTES" in stopped.value.message


class FakeInterpreter:
    """An interpreter of a model with a dynamic input (LiteRT's calls, numpy inside)."""

    made = 0

    def __init__(self) -> None:
        FakeInterpreter.made += 1
        self.shape = [1, 1]

    def get_input_details(self):
        return [{"index": 0, "shape": np.array(self.shape), "shape_signature": np.array([-1, -1]),
                 "dtype": np.float32}]  # fmt: skip

    def get_output_details(self):
        return [{"index": 1}]

    def resize_tensor_input(self, index, shape, strict=False):
        self.shape = list(shape)

    def allocate_tensors(self):
        pass

    def set_tensor(self, index, x):
        self.x = x

    def invoke(self):
        pass

    def get_tensor(self, index):
        return self.x.sum(axis=1, keepdims=True)


def test_interpreters_for_ever_new_shapes_stay_within_the_cache():
    model = LiteRtModel(b"", cache_size=3, interpreter=FakeInterpreter)
    for width in range(1, 20):  # a caller sending a new instance shape each time
        (out,) = model.predict(np.ones((2, width), np.float32))
        assert out.tolist() == [[width], [width]]
        assert model.interpreters <= 3
    before = FakeInterpreter.made
    model.predict(np.ones((2, 19), np.float32))  # the most recent shape is still there
    assert FakeInterpreter.made == before
