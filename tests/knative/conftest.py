"""Fixtures for the manifest tests: the Knative CRD schemas and the knative/ tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from kml.manifests_check import DEFAULT_SCHEMAS, load_crd_schemas

KNATIVE = Path(__file__).resolve().parents[2] / "knative"
BUILDS = ["base", "overlays/jobsink", "overlays/in-cluster-minio", "overlays/strimzi-kafka"]


@pytest.fixture(scope="session")
def crds():
    """The CRD schemas of ../shared/schemas/knative (Service, KafkaSource, JobSink)."""
    return load_crd_schemas(DEFAULT_SCHEMAS)
