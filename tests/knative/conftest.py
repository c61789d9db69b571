"""Fixtures for the manifest tests: the Knative CRD schemas and the knative/ tree."""

from __future__ import annotations

from pathlib import Path

KNATIVE = Path(__file__).resolve().parents[2] / "knative"
BUILDS = [
    "base",
    "overlays/jobsink",
    "overlays/in-cluster-minio",
    "overlays/strimzi-kafka",
    "overlays/strimzi-scram",
]
