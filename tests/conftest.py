"""The test session starts its own real Kafka broker and MinIO on free ports, once, and stops them."""

from __future__ import annotations

import os
import uuid

import pytest

from kafkaml.dev.procs import free_port
from kafkaml.dev.stack import Stack, infrastructure
from kafkaml.settings import Settings


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory) -> Settings:
    state = tmp_path_factory.mktemp("kml-state")
    return Settings.from_env(
        {k: v for k, v in os.environ.items() if k == "KML_CACHE_DIR"},
        state_dir=str(state),
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        minio_port=(minio := free_port()),
        minio_console_port=free_port(),
        kafka_bootstrap="",
        s3_endpoint=f"http://127.0.0.1:{minio}",
        bucket="kml-test",
        register_port=free_port(),
        train_port=free_port(),
        infer_port=free_port(),
    )


@pytest.fixture(scope="session")
def stack(stack_settings: Settings):
    """Settings pointing at a running real Kafka broker and MinIO server."""
    settings = stack_settings.replace(kafka_bootstrap=f"127.0.0.1:{stack_settings.kafka_port}")
    local = Stack(settings, parts=infrastructure(settings))
    try:
        local.up()
        yield settings
    finally:
        local.down()


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic names, keys and ids."""
    return uuid.uuid4().hex[:10]
