"""``kml dev up --kafka-scram``'s settings: one local SCRAM user whose password is made once,
kept readable by its owner only, and found again by the CLI (it is not in settings.json)."""

from __future__ import annotations

from kafkaml.kafka import client_config
from kafkaml.settings import Settings
from kml.dev.kafka_broker import scram_password_file, with_local_scram, with_scram
from kml.dev.stack import _public


def test_the_password_is_made_once_kept_private_and_found_by_the_cli(tmp_path):
    plain = Settings(state_dir=str(tmp_path))
    first = with_scram(plain)
    assert first.kafka_security_protocol == "SASL_PLAINTEXT" and first.kafka_username == "kml"
    assert len(first.kafka_password) >= 24
    assert scram_password_file(str(tmp_path)).stat().st_mode & 0o077 == 0
    assert with_scram(plain).kafka_password == first.kafka_password  # a second `up`
    assert "kafka_password" not in _public(first)
    # the CLI: settings.json gave it the protocol and the user, the file gives the password
    cli = with_local_scram(first.replace(kafka_password=""))
    assert client_config(cli.kafka)["sasl.password"] == first.kafka_password
    assert with_local_scram(plain) == plain  # a plaintext stack stays plaintext
