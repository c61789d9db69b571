"""The one config builder of every Kafka client: the settings' SASL/TLS part on top of the
servers, the client's own keys on top of that, and the password in no repr."""

from __future__ import annotations

import pytest

from kafkaml.kafka import client_config
from kafkaml.settings import Settings


def test_plaintext_adds_nothing_and_a_plain_string_stays_plaintext():
    assert client_config(Settings(kafka_bootstrap="k:9092").kafka) == {
        "bootstrap.servers": "k:9092"
    }
    assert client_config("k:9092", {"group.id": "g"}) == {
        "bootstrap.servers": "k:9092",
        "group.id": "g",
    }


def test_sasl_ssl_carries_the_user_the_mechanism_and_the_ca():
    settings = Settings.from_env(
        {
            "KML_KAFKA_BOOTSTRAP": "kafka:9093",
            "KML_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
            "KML_KAFKA_USERNAME": "kml-train",
            "KML_KAFKA_PASSWORD": "s3cret-pw",
            "KML_KAFKA_CA_FILE": "/etc/kml/kafka-ca/ca.crt",
        }
    )
    config = client_config(settings.kafka, {"group.id": "g"})
    assert config == {
        "bootstrap.servers": "kafka:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "kml-train",
        "sasl.password": "s3cret-pw",
        "ssl.ca.location": "/etc/kml/kafka-ca/ca.crt",
        "group.id": "g",
    }
    assert str(settings.kafka) == "kafka:9093" and f"{settings.kafka}" == "kafka:9093"
    assert "s3cret-pw" not in repr(settings) and "s3cret-pw" not in repr(settings.kafka)


def test_a_wrong_protocol_or_a_missing_user_names_the_setting():
    with pytest.raises(ValueError, match="KML_KAFKA_SECURITY_PROTOCOL"):
        client_config(Settings(kafka_security_protocol="SASL").kafka)
    with pytest.raises(ValueError, match="KML_KAFKA_USERNAME"):
        client_config(Settings(kafka_security_protocol="SASL_PLAINTEXT").kafka)
