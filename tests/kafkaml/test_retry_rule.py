"""One retry rule: every place that decides "retry later or give up" gives the same verdict.

Knative's dispatcher retries 5xx, 404, 408, 409 and 429 and dead-letters every other 4xx. The
train HTTP route answers with the failure's status, the run record keeps ``permanent``, the
``kml.training.failed`` event says ``permanent``, the JobSink entry exits 75 (retry) or 1, and
the infer Kafka path raises (retried) or dead-letters the record itself.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from functions.infer.kafka_path import handle_kafka_event
from functions.train import __main__ as batch
from functions.train.app import create_app
from functions.train.lease import Lease
from functions.train.results import ResultsPublisher
from functions.train.service import Trainer
from kafkaml.errors import EXIT_PERMANENT, EXIT_RETRY, KmlError, is_retried
from kafkaml.events import KAFKA_EVENT, Event, new_event, to_http
from kafkaml.settings import Settings
from storage.registry import Registry
from tests.access import SESSION_AUTH
from tests.fakes import MemoryStore, RecordingPublisher
from tests.functions.infer.fakes import RecordingProducer

STATUSES = [400, 404, 408, 409, 413, 422, 429, 500, 503]
RETRIED = {404, 408, 409, 429, 500, 503}
BODY = {
    "topic": "t:0:0:10",
    "input_format": "RAW",
    "input_config": {"data_type": "float32", "label_type": "uint8", "data_reshape": "4"},
}


class FailingTrainer(Trainer):
    """A trainer whose run fails with one status; everything around it is the real code."""

    def __init__(self, status: int) -> None:
        super().__init__(
            Settings(bucket="unit"), Registry(MemoryStore("unit")), RecordingPublisher()
        )
        self.status = status

    def train(self, msg, *, http, **_):
        raise KmlError(f"failed with {self.status}", status=self.status)


class CapturingPublisher(ResultsPublisher):
    def __init__(self) -> None:
        self.published: list[dict] = []

    def _publish(self, type_, run_id, data, wait):
        self.published.append(data)


def request_event() -> Event:
    return new_event("kml.training.request", "/test", {**BODY, "deployment_id": "7"})


@pytest.mark.parametrize("status", STATUSES)
def test_the_rule_itself(status):
    assert is_retried(status) is (status in RETRIED)


@pytest.mark.parametrize("status", STATUSES)
def test_train_http_route_answers_the_status_knative_retries_or_dead_letters(status):
    app = create_app(Settings(bucket="unit", **SESSION_AUTH), trainer=FailingTrainer(status))
    headers, body = to_http(request_event(), structured=True)
    answer = app.test_client().post("/", data=body, headers=headers)
    assert answer.status_code == status
    assert is_retried(answer.status_code) is (status in RETRIED)


@pytest.mark.parametrize("status", STATUSES)
def test_failed_event_and_run_record_say_permanent_exactly_when_not_retried(status):
    publisher = CapturingPublisher()
    publisher.failed("run-1", "7", KmlError("x", status=status))
    assert publisher.published[0]["permanent"] is (status not in RETRIED)

    registry = Registry(MemoryStore("unit"))
    trainer = Trainer(Settings(bucket="unit"), registry, RecordingPublisher())
    registry.claim_run("run-1", {"deployment_id": "7"})
    lease = Lease(registry, "run-1", registry.get_run("run-1")[1], lease_s=60)  # this attempt's
    trainer._fail(lease, SimpleNamespace(deployment_id="7"), KmlError("x", status=status))
    record, _ = registry.get_run("run-1")
    assert record["permanent"] is (status not in RETRIED)


@pytest.mark.parametrize("status", STATUSES)
def test_jobsink_exit_code_is_retry_exactly_when_retried(status, tmp_path, capsys):
    path = tmp_path / "event.json"
    _, body = to_http(request_event(), structured=True)
    path.write_bytes(body)
    code = batch.run(str(path), Settings(bucket="unit"), trainer=FailingTrainer(status))
    assert code == (EXIT_RETRY if status in RETRIED else EXIT_PERMANENT)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["status"] == status


class FailingCodec:
    def __init__(self, status: int) -> None:
        self.status = status

    def decode_features(self, values):
        raise KmlError("cannot use this record", status=self.status)


@pytest.mark.parametrize("status", STATUSES)
def test_infer_kafka_path_raises_retried_failures_and_dead_letters_the_others(status):
    producer = RecordingProducer()
    service = SimpleNamespace(
        spec={"input_topic": "in", "output_topic": "out"},
        codec=FailingCodec(status),
        conform=lambda x: x,
        settings=Settings(inference_id="digits-1", dlq_topic="dlq"),
        producer=lambda: producer,
    )
    event = Event(
        type=KAFKA_EVENT,
        source="/apis/v1/namespaces/default/kafkasources/kml-infer-digits-1#in",
        id="partition:0/offset:5",
        data=b"\x00" * 4,
        attributes={"knativekafkapartition": "0", "knativekafkaoffset": "5"},
    )
    if status in RETRIED:
        with pytest.raises(KmlError) as info:
            handle_kafka_event(service, event)
        assert info.value.status == status
        assert producer.on("dlq") == []
    else:
        answer = handle_kafka_event(service, event)
        assert answer["dead_lettered"] is True and answer["status"] == status
        assert len(producer.on("dlq")) == 1
