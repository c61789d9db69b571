"""The infer app with a NumPy model and a recording producer: routes, errors, readiness, metrics."""

from __future__ import annotations

import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from functions.infer.app import create_app
from kafkaml.errors import PayloadTooLarge, Unavailable
from tests.functions.infer.fakes import SPEC, LinearModel, RecordingProducer, fixed_loader, settings


def _kafka_headers(partition: int, offset: int, key: str | None = None, **extra: str) -> dict:
    headers = {
        "ce-specversion": "1.0",
        "ce-type": "dev.knative.kafka.event",
        "ce-id": f"partition:{partition}/offset:{offset}",
        "ce-source": "/apis/v1/namespaces/default/kafkasources/kml-infer-digits-1#in",
        "ce-subject": f"partition:{partition}#{offset}",
        "ce-knativekafkapartition": str(partition),
        "ce-knativekafkaoffset": str(offset),
    }
    if key is not None:  # the inference KafkaSource's key type is byte-array: Base64
        headers["ce-key"] = headers["ce-partitionkey"] = base64.b64encode(key.encode()).decode()
    headers.update({f"ce-{k}": v for k, v in extra.items()})
    return headers


def _ready_app(model=None, producer=None, **changes):
    model = model or LinearModel()
    producer = producer or RecordingProducer()
    app = create_app(
        settings(**changes), loader=fixed_loader(model), producer_factory=lambda s: producer
    )
    assert app.extensions["kml.infer"].wait_ready(5)
    return app, model, producer


@pytest.fixture
def served():
    app, model, producer = _ready_app()
    yield app.test_client(), model, producer
    app.extensions["kml.infer"].close()


def _x(seed: int, n: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 8, 8), dtype=np.float32)


def test_readiness_is_503_until_the_model_is_loaded_and_predict_waits_for_it():
    gate = threading.Event()
    app = create_app(
        settings(),
        loader=fixed_loader(LinearModel(), gate=gate),
        producer_factory=lambda s: RecordingProducer(),
    )
    client = app.test_client()
    before = client.get("/health/readiness")
    early = client.post("/v1/models/digits-1:predict", json={"instances": _x(0).tolist()})
    gate.set()
    assert app.extensions["kml.infer"].wait_ready(5)
    assert before.status_code == 503 and "loading" in before.get_json()["error"]
    assert early.status_code == 503
    assert client.get("/health/readiness").status_code == 200
    assert client.get("/health/liveness").status_code == 200


def test_kafka_record_becomes_a_keyed_prediction_with_headers_and_coordinates(served):
    client, model, producer = served
    x = _x(1)
    r = client.post(
        "/", data=x.tobytes(), headers=_kafka_headers(2, 41, key="img-7", kafkaheadertraceid="abc")
    )
    assert r.status_code == 200, r.get_json()
    (out,) = producer.on("out")
    assert out["key"] == b"img-7"
    np.testing.assert_allclose(json.loads(out["value"])["values"], model.expected(x)[0], rtol=1e-6)
    assert out["headers"] == {
        "traceid": b"abc",
        "kml-input-topic": b"in",
        "kml-input-partition": b"2",
        "kml-input-offset": b"41",
        "kml-model-version": b"run-1",  # a pinned run: its run id names the version
    }
    assert r.get_json()["key"] == "img-7"


def test_a_record_without_key_is_keyed_by_its_coordinates(served):
    client, _, producer = served
    r = client.post("/", data=_x(2).tobytes(), headers=_kafka_headers(0, 9))
    assert r.status_code == 200
    assert producer.on("out")[0]["key"] == b"in:0:9"


def test_an_undecodable_record_is_dead_lettered_once_and_answered_2xx_saying_so(served):
    client, model, producer = served
    r = client.post("/", data=b"\x01\x02\x03", headers=_kafka_headers(1, 5, key="bad-1"))
    # Handled: a 4xx would make the KafkaSource's own dead-letter sink add a second copy.
    assert r.status_code == 200
    body = r.get_json()
    assert body["dead_lettered"] is True and "3 bytes" in body["reason"]
    assert (body["kind"], body["status"], body["topic"]) == ("undecodable_record", 400, "dlq")
    assert body["key"] == "bad-1" and body["offset"] == 0
    assert producer.on("out") == [] and model.calls == []
    (dead,) = producer.on("dlq")
    assert dead["value"] == b"\x01\x02\x03" and dead["key"] == b"bad-1"
    h = dead["headers"]
    assert b"3 bytes" in h["kml-error"] and h["kml-error-kind"] == b"undecodable_record"
    assert h["kml-inference-id"] == b"digits-1"
    assert (h["kml-input-topic"], h["kml-input-partition"], h["kml-input-offset"]) == (
        b"in",
        b"1",
        b"5",
    )


def test_a_prediction_kafka_refuses_as_too_large_is_dead_lettered_like_stream_mode(served):
    client, _, producer = served
    refused = []
    send = producer.send

    def too_large_on_out(topic, value, key, headers):
        if topic == "out":
            refused.append(key)
            raise PayloadTooLarge("Kafka refused a record for out: too large")
        return send(topic, value, key, headers)

    producer.send = too_large_on_out
    r = client.post("/", data=_x(8).tobytes(), headers=_kafka_headers(0, 7, key="big"))
    assert r.status_code == 200 and r.get_json()["kind"] == "payload_too_large"
    assert refused == [b"big"]
    (dead,) = producer.on("dlq")
    assert dead["value"] == _x(8).tobytes() and dead["headers"]["kml-error-status"] == b"413"


def test_kafka_down_is_a_503_so_kafkasource_retries(served):
    client, _, producer = served
    producer.down = True
    r = client.post("/", data=_x(3).tobytes(), headers=_kafka_headers(0, 1, key="k"))
    assert r.status_code == 503
    bad = client.post("/", data=b"xx", headers=_kafka_headers(0, 2, key="k"))
    assert bad.status_code == 503  # the dead letter could not be written: retry, never lose it


def test_a_model_failure_is_a_5xx():
    app, _, producer = _ready_app(model=LinearModel(fail=True))
    r = app.test_client().post("/", data=_x(4).tobytes(), headers=_kafka_headers(0, 1))
    assert r.status_code == 500 and r.get_json()["kind"] == "prediction_failed"
    assert producer.sent == []


def test_kserve_v1_predicts_all_instances_in_one_call_and_accepts_flat_ones(served):
    client, model, _ = served
    x = _x(5, n=7)
    instances = x.tolist()
    instances[3] = x[3].ravel().tolist()  # flat: reshaped to the model's 8x8
    r = client.post("/v1/models/digits-1:predict", json={"instances": instances})
    assert r.status_code == 200, r.get_json()
    np.testing.assert_allclose(r.get_json()["predictions"], model.expected(x), rtol=1e-6)
    assert model.calls == [7]
    assert (
        client.post("/v1/models/digits:predict", json={"instances": instances[:1]}).status_code
        == 200
    )  # the model's name works too


def test_the_cloudevent_request_gets_a_response_event(served):
    client, model, _ = served
    x = _x(6, n=3)
    r = client.post(
        "/",
        json={"instances": x.tolist()},
        headers={
            "ce-specversion": "1.0",
            "ce-type": "kml.inference.request",
            "ce-id": "req-1",
            "ce-source": "/tests",
        },
    )
    assert r.status_code == 200
    assert r.headers["ce-type"] == "kml.inference.response"
    assert r.headers["ce-subject"] == "req-1"
    np.testing.assert_allclose(json.loads(r.data)["predictions"], model.expected(x), rtol=1e-6)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"instances": [[1.0, 2.0, 3.0]]}, 422, "[3]"),
        ({"instances": [[[1.0] * 8] * 8, [1.0, 2.0]]}, 422, "same shape"),
        ({"instances": [["a"] * 64]}, 422, "numbers"),
        ({"inputs": []}, 400, "instances"),
        ({"instances": []}, 400, "non-empty"),
        ([1, 2], 400, "JSON object"),
    ],
)
def test_bad_instances_are_client_errors_naming_the_problem(served, body, status, words):
    client, model, _ = served
    r = client.post("/v1/models/digits-1:predict", json=body)
    assert r.status_code == status
    assert words in json.dumps(r.get_json())
    assert model.calls == []


def test_unknown_model_name_and_unknown_event_type(served):
    client, _, _ = served
    assert (
        client.post("/v1/models/other:predict", json={"instances": [[0] * 64]}).status_code == 404
    )
    r = client.post(
        "/",
        json={},
        headers={"ce-specversion": "1.0", "ce-type": "x.y", "ce-id": "1", "ce-source": "/t"},
    )
    assert r.status_code == 400 and "x.y" in r.get_json()["error"]
    meta = client.get("/v1/models/digits-1").get_json()
    assert meta["ready"] is True and meta["input_shape"] == [8, 8]


def test_metrics_count_requests_errors_predictions_and_batches():
    app, model, _ = _ready_app(model=LinearModel(delay_s=0.005), infer_batch_wait_ms=5.0)
    client = app.test_client()
    with ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(
                lambda i: (
                    app.test_client()
                    .post("/v1/models/digits-1:predict", json={"instances": _x(i).tolist()})
                    .status_code
                ),
                range(40),
            )
        )
    assert codes == [200] * 40
    client.post("/", data=b"x", headers=_kafka_headers(0, 1))
    text = client.get("/metrics").get_data(as_text=True)
    assert 'kml_infer_requests_total{outcome="ok",path="kserve"} 40.0' in text
    assert 'kml_infer_requests_total{outcome="ok",path="kafka"} 1.0' in text  # dead-lettered
    assert 'kml_infer_errors_total{kind="undecodable_record"} 1.0' in text
    assert "kml_infer_predictions_total 40.0" in text
    assert 'kml_infer_batch_size_bucket{le="1.0"} ' in text
    singles = float(text.split('kml_infer_batch_size_bucket{le="1.0"} ')[1].split()[0])
    batches = float(text.split("kml_infer_batch_size_count ")[1].split()[0])
    assert batches == len(model.calls) and singles < batches  # some batches held > 1 row
    assert "kml_infer_model_load_seconds" in text and "kml_infer_request_seconds_bucket" in text


def test_spec_fields_are_used_for_output_topic():
    spec = {**SPEC, "output_topic": "elsewhere"}
    producer = RecordingProducer()
    app = create_app(
        settings(), loader=fixed_loader(LinearModel(), spec), producer_factory=lambda s: producer
    )
    assert app.extensions["kml.infer"].wait_ready(5)
    app.test_client().post("/", data=_x(7).tobytes(), headers=_kafka_headers(0, 3))
    assert [r["topic"] for r in producer.sent] == ["elsewhere"]


class _StuckProducer(RecordingProducer):
    """Every send waits (Kafka unreachable) until ``unstick`` is set, then fails with 503."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Semaphore(0)
        self.unstick = threading.Event()

    def send(self, topic, value, key, headers):
        self.waiting.release()
        self.unstick.wait(10)
        raise Unavailable("Kafka at test did not confirm a record")


def test_with_every_prediction_slot_blocked_on_kafka_the_next_request_is_503_at_once():
    producer = _StuckProducer()
    app, _, _ = _ready_app(producer=producer, infer_request_slots=3)
    with ThreadPoolExecutor(3) as pool:
        stuck = [
            pool.submit(
                lambda i=i: (
                    app.test_client()
                    .post("/", data=_x(i).tobytes(), headers=_kafka_headers(0, i))
                    .status_code
                )
            )
            for i in range(3)
        ]
        for _ in range(3):
            assert producer.waiting.acquire(timeout=5)  # all three slots wait on Kafka
        client = app.test_client()
        started = time.monotonic()
        busy = client.post("/", data=_x(9).tobytes(), headers=_kafka_headers(0, 9))
        kserve = client.post("/v1/models/digits-1:predict", json={"instances": _x(9).tolist()})
        took = time.monotonic() - started
        assert busy.status_code == 503 and "3 prediction slots are busy" in busy.get_json()["error"]
        assert kserve.status_code == 503
        assert took < 1.0
        assert client.get("/health/liveness").status_code == 200
        assert client.get("/health/readiness").status_code == 200
        producer.unstick.set()
        assert [f.result(timeout=10) for f in stuck] == [503, 503, 503]
    # The slots are free again.
    producer.unstick.clear()
    ok = RecordingProducer()
    app.extensions["kml.infer"]._producer = ok
    r = app.test_client().post("/", data=_x(1).tobytes(), headers=_kafka_headers(0, 1))
    assert r.status_code == 200 and len(ok.on("out")) == 1
