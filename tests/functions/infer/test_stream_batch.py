"""Stream mode's batch logic without a broker: outputs byte-identical to the event path's, bad
records split out of a batch with the event path's error, and a batch whose delivery fails
rewound and not committed."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from functions.infer.batcher import split_rows
from functions.infer.kafka_path import InputRecord
from functions.infer.metrics import InferMetrics
from functions.infer.model import conform, labelled
from functions.infer.serving import InferenceService, Loaded
from functions.infer.stream import StreamWorker
from functions.infer.stream_batch import decode_batch, event_headers, output_key, output_values
from kafkaml.errors import KmlError
from kafkaml.wire import codec_for
from tests.functions.infer.fakes import SPEC, LinearModel, settings

RAW = codec_for("RAW", {"data_type": "float32", "data_reshape": "8 8"})


def event_value(row) -> bytes:
    """What the event path produces for one row."""
    return json.dumps({"values": row}, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "outputs",
    [
        [np.random.default_rng(1).random((300, 10), dtype=np.float32) ** 9],
        [np.array([[0.0, -0.0, 1e-30, 3.4e38, np.nan, np.inf]], dtype=np.float32)],
        [np.zeros((3, 0), dtype=np.float32)],
        [np.arange(24, dtype=np.float32).reshape(2, 3, 4)],
        [np.ones((4, 2), dtype=np.float32), np.arange(4, dtype=np.int64)],
    ],
    ids=["probabilities", "extremes", "empty-rows", "3d", "two-outputs"],
)
def test_output_values_are_byte_identical_to_the_event_paths(outputs):
    assert output_values(outputs) == [event_value(r) for r in split_rows(outputs)]


def _random_batch(rng: np.random.Generator, i: int) -> np.ndarray:
    """A batch of flat rows as a model might return it: probabilities, any float32 bit pattern
    (NaN, infinities, subnormals, -0.0), magnitudes on both sides of 1e-4 and 1e16, doubles,
    halves and integers."""
    shape = (int(rng.integers(1, 200)), int(rng.integers(1, 12)))
    kind = i % 6
    if kind == 0:
        x = rng.random(shape, dtype=np.float32) ** rng.integers(1, 40)
        return x / x.sum(axis=1, keepdims=True)
    if kind == 1:
        return rng.integers(0, 2**32, shape, dtype=np.uint64).astype(np.uint32).view(np.float32)
    if kind == 2:
        exponents = rng.integers(-46, 39, shape)
        return (rng.standard_normal(shape) * 10.0**exponents).astype(np.float32)
    if kind == 3:
        return rng.integers(0, 2**64, shape, dtype=np.uint64).view(np.float64)
    if kind == 4:
        return (rng.standard_normal(shape) * 10.0 ** rng.integers(-9, 6, shape)).astype(np.float16)
    return rng.integers(-(2**63), 2**63 - 1, shape, dtype=np.int64)


def test_the_batch_encoder_writes_every_row_as_the_event_path_over_many_random_batches():
    rng = np.random.default_rng(16)
    edges = np.array(
        [[0.0, -0.0, 1e-4, 9.99999e-5, 1e-5, -1e-5, 5e-324, 1e16, 9.999999e15, np.nan, -np.inf]]
    )
    with np.errstate(all="ignore"):  # the halves overflow to infinities: wanted
        batches = [edges, edges.astype(np.float32), np.array([[True, False]])]
        batches += [_random_batch(rng, i) for i in range(600)]
        for x in batches:
            assert output_values([x]) == [event_value(row) for row in x.tolist()], x.dtype


def test_the_batch_encoder_takes_the_models_labelled_outputs():
    x = np.random.default_rng(3).random((5, 10), dtype=np.float32)
    assert output_values(labelled([x], "v7")) == [event_value(row) for row in x.tolist()]


def test_headers_are_named_as_the_event_path_gets_them_and_keys_fall_back_alike():
    raw = [
        ("Sensor-Id", b"s1"),
        ("content-type", b"x/y"),
        ("a_b", b"1"),
        ("A-B", b"2"),
        ("--", b""),
    ]
    assert event_headers(raw) == (("ab", b"2"), ("sensorid", b"s1"))
    assert event_headers(None) == ()
    for key in (None, b"", b"\x00\xffk"):
        record = InputRecord(b"", "in", 2, 41, key, (), "partition:2/offset:41")
        assert output_key(key, "in", 2, 41) == record.output_key


def test_bad_records_are_split_out_with_the_error_decoding_them_alone_gives():
    model = LinearModel()
    good = [np.full((8, 8), i, dtype=np.float32).tobytes() for i in range(10)]
    values = [b"\x00" * 3, *good[:4], b"", b"\x00" * 300, *good[4:], b"\x01" * 5]
    decoded = decode_batch(RAW, model, values)
    bad_at = [0, 5, 6, 13]
    assert [i for i, _ in decoded.bad] == bad_at
    for i, error in decoded.bad:
        with pytest.raises(KmlError) as alone:
            RAW.decode_features([values[i]])
        assert (error.message, error.status) == (alone.value.message, alone.value.status)
    assert decoded.ok == [i for i in range(len(values)) if i not in bad_at]
    rows = np.concatenate([x for _, x in decoded.groups])
    assert np.array_equal(rows, RAW.decode_features(good))


def test_a_record_the_model_cannot_take_is_dead_lettered_with_conforms_error():
    """JSON rows of two sizes: the 16-value ones do not fit the 8x8 model, as on the event path."""
    codec = codec_for("JSON", {"data_type": "float32"})
    model = LinearModel()
    values = [json.dumps([0.5] * (64 if i % 3 else 16)).encode() for i in range(9)]
    decoded = decode_batch(codec, model, values)
    assert [i for i, _ in decoded.bad] == [0, 3, 6]
    with pytest.raises(KmlError) as alone:
        conform(codec.decode_features([values[0]]), model)
    assert {e.message for _, e in decoded.bad} == {alone.value.message}
    assert decoded.ok == [1, 2, 4, 5, 7, 8]


class _Msg:
    def __init__(self, partition: int, offset: int, value: bytes) -> None:
        self._p, self._o, self._v = partition, offset, value

    def error(self):
        return None

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def value(self):
        return self._v

    def key(self):
        return f"k{self._o}".encode()

    def headers(self):
        return None

    def topic(self):
        return "in"


class _Consumer:
    def __init__(self, batches):
        self.batches, self.commits, self.seeks = list(batches), [], []

    def subscribe(self, topics, on_assign, on_revoke, on_lost):
        self.on_assign = on_assign

    def consume(self, n, timeout):
        """One batch per poll: a poll takes what is there (timeout 0), and nothing more
        arrives while it waits."""
        if timeout or not self.batches:
            return []
        return self.batches.pop(0)

    def commit(self, offsets, asynchronous):
        self.commits.append({(o.partition, o.offset) for o in offsets})

    def seek(self, tp):
        self.seeks.append((tp.partition, tp.offset))


class _Producer:
    def __init__(self, config, fail_first: bool):
        self.report, self.fail_first, self.sent = config["on_delivery"], fail_first, []

    def produce(self, topic, value, key, headers):
        self.sent.append((topic, key))

    def flush(self, timeout):
        if self.fail_first:
            self.fail_first = False
            self.report("broker down", None)
        return 0


def _worker_over(batches: list, fail_first: bool) -> tuple[StreamWorker, _Consumer, dict]:
    """A stream worker over fake consumer batches (partitions 0 and 1 of ``in`` assigned) and a
    fake producer (``made["p"]``) whose first flush reports a failure when ``fail_first``."""
    from confluent_kafka import TopicPartition

    consumer = _Consumer(batches)
    made: dict = {}
    s = settings()
    service = InferenceService(
        s, InferMetrics(s.inference_id), loader=lambda _: Loaded(SPEC, LinearModel())
    )
    service.start()
    assert service.wait_ready(5)
    worker = StreamWorker(
        s,
        service,
        consumer_factory=lambda config: consumer,
        producer_factory=lambda config: made.setdefault("p", _Producer(config, fail_first)),
    )
    worker.connect()
    consumer.on_assign(consumer, [TopicPartition("in", 0), TopicPartition("in", 1)])
    return worker, consumer, made


def test_a_batch_whose_delivery_fails_is_rewound_not_committed_then_redone():
    x = np.zeros((8, 8), dtype=np.float32).tobytes()
    batch = [_Msg(0, 10, x), _Msg(1, 7, x), _Msg(0, 11, x)]
    worker, consumer, made = _worker_over([batch, [], batch, []], fail_first=True)
    stop = threading.Event()
    stop.set()  # no backoff wait in the test
    assert worker.step(stop) == 0  # produced, in flight
    assert worker.step(stop) == 0  # idle: the batch in flight is not acknowledged
    assert consumer.commits == [] and sorted(consumer.seeks) == [(0, 10), (1, 7)]
    assert worker.step(stop) == 0  # polled again from the rewound offsets: in flight
    assert worker.step(stop) == 3  # idle: acknowledged, committed at once
    assert consumer.commits == [{(0, 12), (1, 8)}]  # past the last record of each partition
    assert [k for _, k in made["p"].sent] == [b"k10", b"k7", b"k11"] * 2  # redone, repeated


def test_a_batch_is_produced_before_the_previous_one_is_confirmed_and_committed_after():
    x = np.zeros((8, 8), dtype=np.float32).tobytes()
    first, second = [_Msg(0, 10, x), _Msg(1, 7, x)], [_Msg(0, 11, x)]
    worker, consumer, made = _worker_over([first, second, []], fail_first=False)
    assert worker.step() == 0 and consumer.commits == []
    assert worker.step() == 2  # the first batch confirmed once the second was predicted
    assert [k for _, k in made["p"].sent] == [b"k10", b"k7", b"k11"]
    assert consumer.commits == [{(0, 11), (1, 8)}]
    assert worker.step() == 1
    assert consumer.commits[-1] == {(0, 12), (1, 8)}
