"""The test session starts its own real Kafka broker and MinIO on free ports, once."""

from __future__ import annotations

import uuid

import pytest

from kafkaml.settings import Settings
from kml.dev.stack import Stack, infrastructure, isolated_settings
from kml.manifests_check import SCHEMAS_SETTING, crd_schema_dir, load_crd_schemas


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


@pytest.fixture(scope="session")
def crds():
    """Knative's CRD schemas (Service, KafkaSource, KafkaSink, JobSink, PingSource).

    They are upstream's files and stay outside the repository; without them the tests that
    validate against them are skipped, saying which setting points at them.
    """
    directory = crd_schema_dir()
    schemas = load_crd_schemas(directory) if directory.is_dir() else {}
    if not schemas:
        pytest.skip(
            f"no Knative CRD schemas in {directory}: set {SCHEMAS_SETTING} to the folder of "
            "Knative's CRD YAML files (default ../shared/schemas/knative beside the checkout)"
        )
    return schemas
