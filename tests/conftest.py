"""The test session starts its own real Kafka broker and MinIO on free ports, once."""

from __future__ import annotations

import uuid

import pytest

from kafkaml.settings import Settings
from kml.dev.stack import Stack, infrastructure, isolated_settings
from kml.manifests_check import (
    KEDA_SCHEMAS_SETTING,
    SCHEMAS_SETTING,
    crd_schema_dir,
    keda_schema_dir,
    load_crd_schemas,
)


@pytest.fixture(autouse=True, scope="session")
def _test_clients_sign_their_calls():
    """Every Flask test client sends its app's own token (``auth_token`` of the settings the
    app was built with), as the CLI does; a test about access sets or drops the header."""
    from flask.testing import FlaskClient

    original = FlaskClient.__init__

    def signed(self, *args, **kwargs):
        original(self, *args, **kwargs)
        settings = self.application.extensions.get("kml.settings")
        if settings is not None and settings.auth_token:
            self.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {settings.auth_token}"

    FlaskClient.__init__ = signed
    try:
        yield
    finally:
        FlaskClient.__init__ = original


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
    """Knative's CRD schemas (Service, KafkaSource, KafkaSink, JobSink, PingSource) and KEDA's
    (ScaledObject, TriggerAuthentication).

    They are upstream's files and stay outside the repository; without them the tests that
    validate against them are skipped, saying which setting points at them.
    """
    schemas = {}
    for what, directory, setting, default in (
        ("Knative", crd_schema_dir(), SCHEMAS_SETTING, "knative"),
        ("KEDA", keda_schema_dir(), KEDA_SCHEMAS_SETTING, "keda"),
    ):
        found = load_crd_schemas(directory) if directory.is_dir() else {}
        if not found:
            pytest.skip(
                f"no {what} CRD schemas in {directory}: set {setting} to the folder of "
                f"{what}'s CRD YAML files (default ../shared/schemas/{default} beside the "
                "checkout)"
            )
        schemas.update(found)
    return schemas
