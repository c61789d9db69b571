"""Validate built manifests: Knative and KEDA CRD schemas, Kubernetes core schemas, and the rules
no schema expresses (timeouts, autoscaling ranges, sinks and scale targets that exist, topics
that have a KafkaTopic).

``check_documents(docs, schemas)`` returns every problem as ``"<kind>/<name>: <message>"``; an
empty list means valid. CRD schemas are read from the ``apiextensions.k8s.io/v1`` CRDs in a
directory and made strict: a field that a CRD does not declare is an error (as a server-side
``kubectl apply --validate=strict`` would say), unless the CRD preserves unknown fields there.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from kml.dev.bridge.sources import SourceError, is_kafka_source, parse_kafka_source
from kml.manifests_rules import (
    check_deployment,
    check_kafka_source,
    check_knative_service,
    check_references,
    check_scaled_object,
    check_strimzi,
    kafka_sink_problems,
)

K8S_VERSION = "1.34"
# Knative's CRD schemas are upstream's files, not the project's: they stay outside the
# repository and are found through this one setting.
SCHEMAS_SETTING = "KML_CRD_SCHEMAS"
DEFAULT_SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "knative"


# KEDA's (the ScaledObject of stream-mode inference) likewise, through their own setting.
KEDA_SCHEMAS_SETTING = "KML_KEDA_SCHEMAS"
DEFAULT_KEDA_SCHEMAS = DEFAULT_SCHEMAS.parent / "keda"


def crd_schema_dir() -> Path:
    """The Knative CRD schemas: ``$KML_CRD_SCHEMAS``, else ``../shared/schemas/knative``."""
    return Path(os.environ.get(SCHEMAS_SETTING) or DEFAULT_SCHEMAS).resolve()


def keda_schema_dir() -> Path:
    """KEDA's CRD schemas: ``$KML_KEDA_SCHEMAS``, else ``../shared/schemas/keda``."""
    return Path(os.environ.get(KEDA_SCHEMAS_SETTING) or DEFAULT_KEDA_SCHEMAS).resolve()


SchemaKey = tuple[str, str, str]  # (group, version, kind)


def load_crd_schemas(directory: Path | None = None) -> dict[SchemaKey, dict[str, Any]]:
    """``(group, version, kind) -> JSON schema`` for every CRD version in ``directory``."""
    schemas: dict[SchemaKey, dict[str, Any]] = {}
    for path in sorted(Path(directory or crd_schema_dir()).glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec.get("versions", []):
                raw = (version.get("schema") or {}).get("openAPIV3Schema")
                if raw:
                    key = (spec["group"], version["name"], spec["names"]["kind"])
                    schema = to_json_schema(raw)
                    # Every object may carry these, declared in its CRD or not.
                    props = schema.setdefault("properties", {})
                    for field, kind in (
                        ("apiVersion", "string"),
                        ("kind", "string"),
                        ("metadata", "object"),
                    ):
                        props.setdefault(field, {"type": kind})
                    schemas[key] = schema
    if not schemas:
        raise FileNotFoundError(f"no CustomResourceDefinition schemas in {directory}")
    return schemas


def to_json_schema(node: Any) -> Any:
    """An OpenAPI v3 structural schema as a strict JSON schema (draft 2020-12)."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _schema_problems(doc: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    ]


def _core_problems(doc: dict[str, Any]) -> list[str]:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(str(p) for p in e.path) or '(root)'}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {doc.get('apiVersion')} {doc.get('kind')}"]
    return []


def name_of(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def schema_problems(doc: dict[str, Any], crds: dict[SchemaKey, dict[str, Any]]) -> list[str]:
    """What the schemas say about one manifest."""
    api = str(doc.get("apiVersion", ""))
    group, _, version = api.rpartition("/")
    key = (group, version, doc.get("kind", ""))
    if key in crds:
        found = _schema_problems(doc, crds[key])
        if doc.get("kind") == "JobSink":
            job = copy.deepcopy(((doc.get("spec") or {}).get("job")) or {})
            job.setdefault("metadata", {"name": "jobsink-job"})
            found += [f"spec.job.{p}" for p in _core_problems(job)]
        return found
    if group.endswith(".knative.dev") and doc.get("kind") == "KafkaSink":
        return kafka_sink_problems(doc)  # no CRD schema for KafkaSink in the schemas folder
    if group == "kafka.strimzi.io":
        return check_strimzi(doc)  # Strimzi's CRDs are not vendored: structural rules instead
    if group.endswith(".knative.dev") or group == "keda.sh":
        return [f"no CRD schema for {api} {doc.get('kind')}"]
    return _core_problems(doc)


def rule_problems(doc: dict[str, Any]) -> list[str]:
    """The rules a schema cannot express, for one manifest."""
    if doc.get("kind") == "Service" and str(doc.get("apiVersion")).startswith("serving.knative"):
        return check_knative_service(doc)
    if is_kafka_source(doc):
        found = check_kafka_source(doc)
        try:
            parse_kafka_source(doc)
        except SourceError as e:
            found.append(str(e))
        return found
    if doc.get("kind") == "Deployment" and doc.get("apiVersion") == "apps/v1":
        return check_deployment(doc)
    if doc.get("kind") == "ScaledObject" and str(doc.get("apiVersion")).startswith("keda.sh/"):
        return check_scaled_object(doc)
    return []


def check_documents(docs: list[dict[str, Any]], crds: dict[SchemaKey, dict[str, Any]]) -> list[str]:
    """Every problem of a kustomize build: schemas, per-manifest rules, cross references."""
    problems: list[str] = []
    for doc in docs:
        for p in schema_problems(doc, crds) + rule_problems(doc):
            problems.append(f"{name_of(doc)}: {p}")
    return problems + check_references(docs)


def check_rendered(
    docs: list[dict[str, Any]], crds: dict[SchemaKey, dict[str, Any]] | None = None
) -> list[str]:
    """Every problem of manifests rendered to be applied to a cluster that already holds the
    base (so references to its ConfigMap and Secrets are not looked for): the Kubernetes core
    schemas, the rules, and the CRD schemas when ``crds`` has them (without, Knative's and
    KEDA's kinds are checked by the rules alone)."""
    problems: list[str] = []
    for doc in docs:
        found = schema_problems(doc, crds or {})
        if not crds:
            found = [p for p in found if not p.startswith("no CRD schema for ")]
        problems += [f"{name_of(doc)}: {p}" for p in found + rule_problems(doc)]
    return problems


def missing_topics(docs: list[dict[str, Any]], strimzi_docs: list[dict[str, Any]]) -> list[str]:
    """Topics read or written by ``docs`` (KafkaSources, KafkaSinks, ScaledObjects' Kafka
    triggers, the settings) that have no KafkaTopic in ``strimzi_docs``."""
    topics = {
        (d.get("spec") or {}).get("topicName") or d["metadata"]["name"]
        for d in strimzi_docs
        if d.get("kind") == "KafkaTopic"
    }
    wanted: dict[str, str] = {}
    for doc in docs:
        spec = doc.get("spec") or {}
        if is_kafka_source(doc):
            for t in spec.get("topics") or []:
                wanted.setdefault(t, name_of(doc))
        elif doc.get("kind") == "KafkaSink" and spec.get("topic"):
            wanted.setdefault(spec["topic"], name_of(doc))
        elif doc.get("kind") == "ScaledObject":
            for trigger in spec.get("triggers") or []:
                topic = (trigger.get("metadata") or {}).get("topic")
                if trigger.get("type") == "kafka" and topic:
                    wanted.setdefault(topic, name_of(doc))
        elif doc.get("kind") == "ConfigMap":
            for k, v in (doc.get("data") or {}).items():
                if k.startswith("KML_") and k.endswith("_TOPIC"):
                    wanted.setdefault(v, f"{name_of(doc)} {k}")
    return [
        f"{who}: topic {t!r} has no KafkaTopic in the strimzi-kafka overlay"
        for t, who in sorted(wanted.items())
        if t not in topics
    ]
