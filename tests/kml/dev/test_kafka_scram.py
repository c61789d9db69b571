"""The local broker with SCRAM (``KML_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT``): a client
without the user, or with a wrong password, is refused; the clients the project builds from the
settings (``kafkaml.kafka.client_config``: the range reader, the confirming producer, infer's
producer, the topic admin) produce and consume."""

from __future__ import annotations

import secrets

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from functions.infer.producer import DeliveringProducer
from kafkaml.errors import KmlError
from kafkaml.kafka import ConfirmingProducer, end_offsets, ensure_topic, read_offset_ranges
from kafkaml.settings import KafkaBootstrap
from kafkaml.wire import OffsetRange
from kml.dev.kafka_broker import KafkaBroker
from kml.dev.stack import isolated_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def scram(tmp_path_factory):
    settings = isolated_settings(
        str(tmp_path_factory.mktemp("kml-scram")),
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_username="kml",
        kafka_password=secrets.token_urlsafe(18),
    )
    broker = KafkaBroker(settings)
    broker.start()
    try:
        yield settings
    finally:
        broker.stop()


def test_a_client_without_the_scram_user_is_refused(scram):
    with pytest.raises(KafkaException) as plain:
        AdminClient({"bootstrap.servers": scram.kafka_bootstrap}).list_topics(timeout=5)
    print(f"no credentials: {plain.value}")
    wrong = KafkaBootstrap(
        scram.kafka_bootstrap,
        {**scram.kafka.security, "sasl.password": "not-" + scram.kafka_password},
    )
    with pytest.raises((KafkaException, TimeoutError, KmlError)) as bad:
        ensure_topic(wrong, "kml-scram-refused", timeout_s=5)
    print(f"wrong password: {type(bad.value).__name__} {bad.value}")
    assert (
        "kml-scram-refused"
        not in AdminClient({"bootstrap.servers": scram.kafka_bootstrap, **scram.kafka.security})
        .list_topics(timeout=10)
        .topics
    )


def test_the_projects_clients_produce_and_consume_with_the_settings(scram):
    topic = "kml-scram-ok"
    ensure_topic(scram.kafka, topic, timeout_s=20)
    producer = ConfirmingProducer(scram.kafka, 20)
    for i in range(3):
        producer.produce(topic, f"record-{i}".encode())
    producer.flush()
    infer = DeliveringProducer.from_settings(scram.replace(infer_produce_timeout_s=20))
    infer.send(topic, b"from-infer", None, [])
    ends = end_offsets(scram.kafka, topic, 20)
    assert ends == {0: 4}
    records = read_offset_ranges(scram.kafka, [OffsetRange(topic, 0, 0, 4)], timeout_s=20)
    assert records.values == [b"record-0", b"record-1", b"record-2", b"from-infer"]
    assert "password" not in repr(scram.kafka) and scram.kafka_password not in repr(scram)
