"""Following a stream without a stack: the pointer check, the swap under concurrent callers, a
version that fails to load, and the version label on every output."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from functions.infer.app import create_app
from functions.infer.batcher import MicroBatcher
from functions.infer.follow import Pointer, Retries, StreamFollow, pointer_of
from functions.infer.metrics import InferMetrics
from functions.infer.model import Versioned, labelled, version_header, version_of
from functions.infer.serving import InferenceService, Loaded
from storage.objects import StoredObject
from tests.functions.infer.fakes import SPEC, LinearModel, RecordingProducer, settings
from tests.functions.infer.test_app import _kafka_headers

STREAM = "s-digits"
A, B = "digits-s-digits@1", "digits-s-digits@2"


class Pointers:
    """``streams/<id>.json`` as S3 answers it: an ETag per content, 304 when it is unchanged."""

    def __init__(self) -> None:
        self.stream = {"id": STREAM, "promoted": None, "cursor": {"0": 0}}
        self.asked: list[str] = []
        self.down = False

    def promote(self, version: str, run_id: str) -> None:
        self.stream = {**self.stream, "promoted": {"model": version, "run_id": run_id}}

    def get_if_changed(self, key: str, etag: str) -> StoredObject | None:
        assert key == f"streams/{STREAM}.json"
        if self.down:
            raise ConnectionError("storage unreachable")
        self.asked.append(etag)
        body = json.dumps(self.stream, sort_keys=True).encode()
        current = f'"{hash(body) & 0xFFFFFFFF:x}"'
        return None if etag == current else StoredObject(key, body, current)


class Shifted(LinearModel):
    """Another real model: other weights, so its predictions differ from ``LinearModel``'s."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.weights = self.weights[:, ::-1].copy()


def test_the_pointer_is_read_once_then_checked_with_its_etag_until_it_moves():
    pointers = Pointers()
    follow = StreamFollow(STREAM, pointers, load=lambda p: LinearModel())
    assert follow.check() is None  # read, but nothing promoted yet
    assert follow.check() is None and pointers.asked[1] != ""  # conditional: 304
    pointers.promote(A, "run-a")
    assert follow.check() == Pointer(STREAM, A, "run-a")
    assert follow.check() is None  # unchanged since
    pointers.stream = {**pointers.stream, "cursor": {"0": 5}}  # a window without promotion
    assert follow.check() == Pointer(STREAM, A, "run-a")  # read again, same pointer
    follow.forget()
    assert follow.check() == Pointer(STREAM, A, "run-a") and pointers.asked[-1] == ""
    assert pointer_of({"id": STREAM, "promoted": {"model": B}}) is None  # no run: not a pointer


def test_a_failed_version_is_retried_later_each_time_later():
    now = [0.0]
    retries = Retries(cap_s=4.0, clock=lambda: now[0])
    assert retries.due(B)
    assert [retries.failed(B) for _ in range(4)] == [1.0, 2.0, 4.0, 4.0]
    assert not retries.due(B) and retries.failing == [B]
    now[0] = 10.0
    assert retries.due(B)
    retries.succeeded(B)
    assert retries.failing == []


def test_labels_survive_the_batchers_slices_and_name_the_header():
    out = labelled([np.arange(12.0).reshape(6, 2)], A)
    assert version_of([out[0][2:4]]) == A and version_of([out[0][5]]) == A
    assert version_header(out) == [("kml-model-version", A.encode())]
    assert version_header([np.zeros((1, 2))]) == []  # an unlabelled output names nothing
    model = Versioned(LinearModel(), A)
    batcher = MicroBatcher(model.predict, max_rows=64, max_wait_s=0.01)
    try:
        x = np.random.default_rng(0).random((3, 8, 8), dtype=np.float32)
        got = batcher.predict(x, timeout_s=5)
        assert version_of(got) == A
        np.testing.assert_allclose(got[0], model.model.expected(x), rtol=1e-6)
    finally:
        batcher.close()


def _service(pointers: Pointers, models: dict[str, LinearModel], **changes):
    """A service following ``pointers``, each run id loading the model ``models`` names."""
    pointers.promote(A, "run-a")
    follow = StreamFollow(STREAM, pointers, load=lambda p: models[p.run_id])
    spec = {**SPEC, "stream": STREAM, "run_id": "run-a", "model_version": A}
    loader = lambda s: Loaded(spec, models["run-a"], follow)  # noqa: E731
    svc = InferenceService(settings(infer_follow_s=3600, **changes), InferMetrics("t"), loader)
    svc.start()
    assert svc.wait_ready(5)
    return svc


def test_a_promotion_swaps_the_model_under_load_with_no_failed_call_and_every_output_labelled():
    a, b = LinearModel(delay_s=0.002), Shifted(delay_s=0.002)
    pointers = Pointers()
    svc = _service(pointers, {"run-a": a, "run-b": b})
    stop = threading.Event()
    seen: list[tuple[float, str, bool]] = []
    errors: list[BaseException] = []

    def caller(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            x = svc.conform(rng.random((1 + seed % 3, 8, 8), dtype=np.float32))
            try:
                out = svc.predict(x)
            except BaseException as e:  # noqa: BLE001 - any failure is what the test counts
                errors.append(e)
                continue
            version = version_of(out)
            model = a if version == A else b
            seen.append((time.monotonic(), version, np.allclose(out[0], model.expected(x))))

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        assert svc.follow_once() == "same"  # the first check reads it: the version serving
        assert svc.follow_once() == "unchanged"  # then 304: nothing moved
        pointers.promote(B, "run-b")
        assert svc.follow_once() == "swapped"
        swapped_at = time.monotonic()
        time.sleep(0.3)
        assert svc.follow_once() == "unchanged"
    finally:
        stop.set()
        for t in threads:
            t.join()
        svc.close()
    assert errors == []
    assert {v for _, v, _ in seen} == {A, B}
    assert all(ok for _, _, ok in seen)  # each label names the model that computed the output
    # a batch that started on A may finish just after the swap; none started after it is A's
    assert not [v for at, v, _ in seen if at > swapped_at + 0.1 and v == A]
    assert svc.loaded.version == B and svc.previous_version == A and svc.swaps == 1
    assert svc.spec["run_id"] == "run-b"
    assert b"kml_infer_model_swaps_total 1.0" in svc.metrics.render()
    assert b'kml_infer_model_version{version="digits-s-digits@2"} 1.0' in svc.metrics.render()


def test_a_version_that_does_not_load_keeps_the_old_one_serving_and_is_retried():
    class Broken(LinearModel):
        input_shape = (4, 4)  # loads, but takes other input than the serving version

    pointers = Pointers()
    models: dict = {"run-a": LinearModel(), "run-c": Broken()}
    svc = _service(pointers, models)
    try:
        pointers.promote("digits-s-digits@3", "run-x")  # its artifacts are missing: KeyError
        assert svc.follow_once() == "failed"
        assert svc.follow_once() == "waiting"  # retried after a backoff, not every check
        assert svc.loaded.version == A
        out = svc.predict(svc.conform(np.zeros((2, 8, 8), dtype=np.float32)))
        assert version_of(out) == A
        pointers.promote("digits-s-digits@4", "run-c")
        assert svc.follow_once() == "failed"  # other input shape: refused before the swap
        assert svc.loaded.version == A and svc.following["failing_versions"] == [
            "digits-s-digits@3",
            "digits-s-digits@4",
        ]
        assert b"kml_infer_model_swap_failures_total 2.0" in svc.metrics.render()
        models["run-c"] = Shifted()  # the artifacts are fixed; the next due check swaps
        svc._retries = Retries()
        assert svc.follow_once() == "swapped" and svc.loaded.version == "digits-s-digits@4"
        pointers.down = True
        assert svc.follow_once() == "unreachable" and svc.loaded.version == "digits-s-digits@4"
    finally:
        svc.close()


@pytest.fixture
def following_app():
    pointers = Pointers()
    pointers.promote(A, "run-a")
    models = {"run-a": LinearModel(), "run-b": Shifted()}
    follow = StreamFollow(STREAM, pointers, load=lambda p: models[p.run_id])
    spec = {**SPEC, "stream": STREAM, "run_id": "run-a", "model_version": A}
    producer = RecordingProducer()
    app = create_app(
        settings(infer_follow_s=3600),
        loader=lambda s: Loaded(spec, models["run-a"], follow),
        producer_factory=lambda s: producer,
    )
    service = app.extensions["kml.infer"]
    assert service.wait_ready(5)
    yield app.test_client(), service, pointers, producer
    service.close()


def test_kafka_outputs_kserve_answers_and_metadata_name_the_version(following_app):
    client, service, pointers, producer = following_app
    x = np.random.default_rng(3).random((1, 8, 8), dtype=np.float32)

    def both() -> tuple[str, str]:
        r = client.post("/", data=x.tobytes(), headers=_kafka_headers(0, len(producer.sent)))
        assert r.status_code == 200, r.get_json()
        p = client.post("/v1/models/digits-1:predict", json={"instances": x.tolist()})
        assert p.status_code == 200, p.get_json()
        return producer.on("out")[-1]["headers"]["kml-model-version"].decode(), p.get_json()[
            "model_version"
        ]

    assert both() == (A, A)
    meta = client.get("/v1/models/digits-1").get_json()
    assert (meta["model_version"], meta["stream"], meta["run_id"]) == (A, STREAM, "run-a")
    assert meta["following"]["swaps"] == 0 and meta["following"]["check_every_s"] == 3600
    pointers.promote(B, "run-b")
    assert service.follow_once() == "swapped"
    assert both() == (B, B)
    meta = client.get("/v1/models/digits-1").get_json()
    assert (meta["model_version"], meta["run_id"]) == (B, "run-b")
    assert meta["following"]["previous_version"] == A and meta["following"]["swaps"] == 1


def test_a_pinned_run_is_labelled_with_its_run_id_and_follows_nothing():
    app = create_app(
        settings(),
        loader=lambda s: Loaded(dict(SPEC), LinearModel()),
        producer_factory=lambda s: RecordingProducer(),
    )
    service = app.extensions["kml.infer"]
    try:
        assert service.wait_ready(5)
        client = app.test_client()
        meta = client.get("/v1/models/digits-1").get_json()
        assert meta["model_version"] == "run-1" and meta["following"] is None
        assert service.follow_once() == "unchanged"
        r = client.post(
            "/v1/models/digits-1:predict", json={"instances": np.zeros((1, 64)).tolist()}
        )
        assert r.get_json()["model_version"] == "run-1"
    finally:
        service.close()


class _Msg:
    def __init__(self, offset: int, value: bytes) -> None:
        self._offset, self._value = offset, value

    def error(self):
        return None

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return b"k%d" % self._offset

    def headers(self):
        return None

    def topic(self) -> str:
        return "in"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


class _Consumer:
    def __init__(self, batches: list[list[_Msg]]) -> None:
        self.batches = batches

    def subscribe(self, topics, **callbacks) -> None:
        callbacks["on_assign"](self, [type("TP", (), {"partition": 0, "topic": "in"})()])

    def consume(self, n, timeout):
        return self.batches.pop(0) if self.batches else []

    def commit(self, **kw) -> None:
        pass

    def close(self) -> None:
        pass


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, dict]] = []

    def produce(self, topic, value, key, headers=None) -> None:
        self.sent.append((key, dict(headers)))

    def flush(self, timeout) -> int:
        return 0


def test_stream_mode_labels_each_batch_with_the_version_that_predicted_it():
    from functions.infer.stream import StreamWorker

    pointers = Pointers()
    svc = _service(pointers, {"run-a": LinearModel(), "run-b": Shifted()})
    x = np.random.default_rng(5).random((4, 8, 8), dtype=np.float32)
    consumer = _Consumer([[_Msg(i, x[i].tobytes()) for i in (0, 1)], [_Msg(2, x[2].tobytes())]])
    producer = _Producer()
    worker = StreamWorker(
        svc.settings, svc, consumer_factory=lambda c: consumer, producer_factory=lambda c: producer
    )
    try:
        worker.connect()
        assert worker.step() == 0  # produced; confirmed while the next batch is predicted
        pointers.promote(B, "run-b")
        assert svc.follow_once() == "swapped"
        assert worker.step() == 2
        assert worker.step() == 1  # idle: the last batch confirmed
    finally:
        svc.close()
    assert [(k, h["kml-model-version"]) for k, h in producer.sent] == [
        (b"k0", A.encode()),
        (b"k1", A.encode()),
        (b"k2", B.encode()),
    ]
