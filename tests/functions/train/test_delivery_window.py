"""The control KafkaSource's retries outlast train's lease and arrival grace (pure: the base
manifest, read as the local bridge reads it)."""

from __future__ import annotations

from pathlib import Path

import yaml

from kafkaml.settings import Settings
from kml.dev.bridge.sources import DeliveryPolicy

BASE = Path(__file__).resolve().parents[3] / "knative" / "base" / "kafkasource-control.yaml"


def retry_window_s() -> float:
    source = yaml.safe_load(BASE.read_text())
    policy = DeliveryPolicy.from_spec(source["spec"]["delivery"])
    return sum(policy.backoff(n) for n in range(1, policy.retry + 1))


def test_a_dead_attempt_s_lease_lapses_before_the_control_message_s_retries_run_out():
    """A train pod killed mid-fit stops renewing its lease: it lapses within train_lease_s, and
    a retry after that takes the run over (with a shorter window every retry would get 409 and
    the message would be dead-lettered, the run left running)."""
    window, lease = retry_window_s(), Settings().train_lease_s
    print(f"\ncontrol retries span {window:g}s; train lease {lease:g}s")
    assert window > lease


def test_the_last_retry_of_a_message_naming_what_never_came_is_answered_permanently():
    """404/503 while the message is younger than the grace, then 422 and kml.training.failed:
    a retry must come after the grace, or the message is dead-lettered unannounced."""
    assert retry_window_s() > Settings().train_arrival_grace_s
