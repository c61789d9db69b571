"""The test session starts its own real Kafka broker and MinIO on free ports, once."""

from __future__ import annotations

import uuid

import pytest

from kafkaml.settings import Settings
from kml.dev.stack import Stack, infrastructure, isolated_settings


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Settings:
    """Settings pointing at a running real Kafka broker and MinIO server."""
    settings = isolated_settings(str(tmp_path_factory.mktemp("kml-state")), bucket="kml-test")
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
