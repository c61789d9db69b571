"""The rules of our manifests that no CRD schema encodes (Knative's webhook limits and ours).

Each function returns a list of problems (empty = fine) for one manifest, except
``check_references`` which looks across a whole build.
"""

from __future__ import annotations

import re
from typing import Any

from kml.dev.bridge.sources import (
    BACKOFF_POLICIES,
    KEY_TYPE_LABEL,
    KEY_TYPES,
    ORDERINGS,
    SourceError,
    is_kafka_source,
    parse_duration,
)

MAX_TIMEOUT_S = 600
MAX_CONTAINER_CONCURRENCY = 1000
AUTOSCALING = "autoscaling.knative.dev/"
METRICS = ("concurrency", "rps", "cpu", "memory")
CLASSES = ("kpa.autoscaling.knative.dev", "hpa.autoscaling.knative.dev")
PROBES = {"livenessProbe": "/health/liveness", "readinessProbe": "/health/readiness"}
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)
SINK_KINDS = {
    ("serving.knative.dev", "Service"),
    ("eventing.knative.dev", "KafkaSink"),
    ("sinks.knative.dev", "JobSink"),
}


def _int(value: Any) -> int | None:
    try:
        return int(str(value)) if re.fullmatch(r"-?\d+", str(value)) else None
    except ValueError:
        return None


SCALE_TO_ZERO = {"kml-register", "kml-train", "kml-infer"}
"""The project's own functions must scale to zero; an inference deployment's min-scale is the
operator's choice (its spec's ``min_scale``)."""


def check_autoscaling(annotations: dict[str, str], scale_to_zero: bool = True) -> list[str]:
    found: list[str] = []
    scale = {}
    for name in ("min-scale", "max-scale", "initial-scale"):
        if AUTOSCALING + name in annotations:
            value = _int(annotations[AUTOSCALING + name])
            if value is None or value < 0:
                found.append(
                    f"{AUTOSCALING}{name}={annotations[AUTOSCALING + name]!r} "
                    "is not an integer >= 0"
                )
            else:
                scale[name] = value
    for name in ("min-scale", "max-scale"):
        if AUTOSCALING + name not in annotations:
            found.append(f"{AUTOSCALING}{name} is not set")
    if scale_to_zero and scale.get("min-scale", 0) != 0:
        found.append(f'{AUTOSCALING}min-scale must be "0" so the function scales to zero')
    lo, hi = scale.get("min-scale"), scale.get("max-scale")
    if lo is not None and hi not in (None, 0) and lo > hi:
        found.append(f"{AUTOSCALING}min-scale {lo} > max-scale {hi}")
    if AUTOSCALING + "target" in annotations:
        try:
            ok = float(annotations[AUTOSCALING + "target"]) > 0
        except ValueError:
            ok = False
        if not ok:
            found.append(f"{AUTOSCALING}target={annotations[AUTOSCALING + 'target']!r} is not > 0")
    if annotations.get(AUTOSCALING + "metric", "concurrency") not in METRICS:
        found.append(f"{AUTOSCALING}metric must be one of {METRICS}")
    if annotations.get(AUTOSCALING + "class", CLASSES[0]) not in CLASSES:
        found.append(f"{AUTOSCALING}class must be one of {CLASSES}")
    return found


def check_container(c: dict[str, Any], prefix: str) -> list[str]:
    found: list[str] = []
    for probe, path in PROBES.items():
        got = ((c.get(probe) or {}).get("httpGet") or {}).get("path")
        if got != path:
            found.append(f"{prefix}.{probe}: needs httpGet on {path} (got {got!r})")
    resources = c.get("resources") or {}
    for part in ("requests", "limits"):
        missing = {"cpu", "memory"} - set(resources.get(part) or {})
        if missing:
            found.append(f"{prefix}.resources.{part}: missing {sorted(missing)}")
    for env in c.get("env") or []:
        if SECRET_NAME.search(env.get("name", "")) and "value" in env:
            found.append(
                f"{prefix}.env {env['name']}: a secret must come from a Secret "
                "(valueFrom.secretKeyRef or envFrom.secretRef), never inline"
            )
    return found


def check_knative_service(doc: dict[str, Any]) -> list[str]:
    template = (doc.get("spec") or {}).get("template") or {}
    spec = template.get("spec") or {}
    annotations = ((template.get("metadata") or {}).get("annotations")) or {}
    name = (doc.get("metadata") or {}).get("name", "")
    found = check_autoscaling(annotations, scale_to_zero=name in SCALE_TO_ZERO)
    timeout = spec.get("timeoutSeconds")
    if not isinstance(timeout, int) or not 0 < timeout <= MAX_TIMEOUT_S:
        found.append(
            f"spec.template.spec.timeoutSeconds={timeout!r} must be set, 1..{MAX_TIMEOUT_S}"
        )
    cc = spec.get("containerConcurrency")
    if not isinstance(cc, int) or not 0 <= cc <= MAX_CONTAINER_CONCURRENCY:
        found.append(
            f"spec.template.spec.containerConcurrency={cc!r} must be set, "
            f"0..{MAX_CONTAINER_CONCURRENCY}"
        )
    for i, c in enumerate(spec.get("containers") or []):
        found += check_container(c, f"spec.template.spec.containers[{i}]")
    return found


FUNCTION_DEPLOYMENTS = {"kml-infer"}
"""``app.kubernetes.io/name`` of the Deployments that run a function (stream-mode inference);
other Deployments (an in-cluster MinIO) keep their own probes."""


def check_deployment(doc: dict[str, Any]) -> list[str]:
    """A function's Deployment: probes on the health paths, resources, no inline secrets."""
    labels = (doc.get("metadata") or {}).get("labels") or {}
    if labels.get("app.kubernetes.io/name") not in FUNCTION_DEPLOYMENTS:
        return []
    spec = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
    found: list[str] = []
    for i, c in enumerate(spec.get("containers") or []):
        found += check_container(c, f"spec.template.spec.containers[{i}]")
    return found


KAFKA_TRIGGER_FIELDS = ("bootstrapServers", "consumerGroup", "topic", "lagThreshold")


def check_scaled_object(doc: dict[str, Any]) -> list[str]:
    """A KEDA ScaledObject: a replica range that can reach zero only from below, and Kafka
    triggers naming servers, group, topic and a positive lag threshold."""
    spec = doc.get("spec") or {}
    found: list[str] = []
    lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if not isinstance(lo, int) or not isinstance(hi, int) or not 0 <= lo <= hi or hi < 1:
        found.append(
            f"spec.minReplicaCount {lo!r} / maxReplicaCount {hi!r}: need 0 <= min <= max, max >= 1"
        )
    for i, trigger in enumerate(spec.get("triggers") or []):
        if trigger.get("type") != "kafka":
            continue
        meta = trigger.get("metadata") or {}
        for name in KAFKA_TRIGGER_FIELDS:
            if not meta.get(name):
                found.append(f"spec.triggers[{i}].metadata.{name} must be set")
        for name, least in (("lagThreshold", 1), ("activationLagThreshold", 0)):
            value = meta.get(name)
            count = None if value is None else _int(value)
            if value is not None and (count is None or count < least):
                found.append(
                    f"spec.triggers[{i}].metadata.{name}={value!r} must be an integer >= {least}"
                )
        if meta.get("offsetResetPolicy", "latest") not in ("earliest", "latest"):
            found.append(
                f"spec.triggers[{i}].metadata.offsetResetPolicy must be earliest or latest"
            )
    return found


def check_kafka_source(doc: dict[str, Any]) -> list[str]:
    spec = doc.get("spec") or {}
    found: list[str] = []
    if not spec.get("consumerGroup"):
        found.append("spec.consumerGroup must be set")
    if spec.get("ordering") not in ORDERINGS:
        found.append(f"spec.ordering must be chosen explicitly: one of {ORDERINGS}")
    key_type = ((doc.get("metadata") or {}).get("labels") or {}).get(KEY_TYPE_LABEL)
    if key_type is not None and key_type not in KEY_TYPES:
        found.append(f"label {KEY_TYPE_LABEL}={key_type!r} is not one of {KEY_TYPES}")
    delivery = spec.get("delivery")
    if not isinstance(delivery, dict):
        return found + ["spec.delivery must be explicit (retry, backoff, timeout, deadLetterSink)"]
    for field in ("retry", "backoffPolicy", "backoffDelay", "timeout", "deadLetterSink"):
        if field not in delivery:
            found.append(f"spec.delivery.{field} must be set")
    if "backoffPolicy" in delivery and delivery["backoffPolicy"] not in BACKOFF_POLICIES:
        found.append(f"spec.delivery.backoffPolicy must be one of {BACKOFF_POLICIES}")
    for field in ("backoffDelay", "timeout"):
        if field in delivery:
            try:
                seconds = parse_duration(str(delivery[field]))
            except SourceError as e:
                found.append(f"spec.delivery.{field}: {e}")
                continue
            if field == "timeout" and not 0 < seconds <= MAX_TIMEOUT_S:
                found.append(
                    f"spec.delivery.timeout {delivery[field]} must be within "
                    f"0..{MAX_TIMEOUT_S} s (Knative's request cap)"
                )
    return found


def kafka_sink_problems(doc: dict[str, Any]) -> list[str]:
    spec = doc.get("spec") or {}
    found = []
    if not isinstance(spec.get("topic"), str) or not spec.get("topic"):
        found.append("spec.topic must be a topic name")
    servers = spec.get("bootstrapServers")
    if not isinstance(servers, list) or not servers or not all(isinstance(s, str) for s in servers):
        found.append("spec.bootstrapServers must be a non-empty list of host:port")
    if spec.get("contentMode", "binary") not in ("binary", "structured"):
        found.append("spec.contentMode must be binary or structured")
    return found


def check_strimzi(doc: dict[str, Any]) -> list[str]:
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    labels = (doc.get("metadata") or {}).get("labels") or {}
    found = []
    if kind in ("KafkaTopic", "KafkaNodePool", "KafkaUser") and not labels.get(
        "strimzi.io/cluster"
    ):
        found.append("label strimzi.io/cluster must name the Kafka cluster")
    if kind == "KafkaTopic":
        for field in ("partitions", "replicas"):
            if not isinstance(spec.get(field), int) or spec[field] < 1:
                found.append(f"spec.{field} must be an integer >= 1")
    elif kind == "KafkaNodePool":
        if not isinstance(spec.get("replicas"), int) or spec["replicas"] < 1:
            found.append("spec.replicas must be an integer >= 1")
        if not set(spec.get("roles") or []) or not set(spec["roles"]) <= {"controller", "broker"}:
            found.append("spec.roles must be a non-empty subset of [controller, broker]")
    elif kind == "KafkaUser":
        if (spec.get("authentication") or {}).get("type") not in ("scram-sha-512", "tls"):
            found.append("spec.authentication.type must be scram-sha-512 or tls")
        authorization = spec.get("authorization") or {}
        if authorization.get("type") != "simple" or not authorization.get("acls"):
            found.append("spec.authorization must be simple with acls")
        for i, rule in enumerate(authorization.get("acls") or []):
            if not (rule.get("resource") or {}).get("type") or not rule.get("operations"):
                found.append(f"spec.authorization.acls[{i}] needs a resource type and operations")
    elif kind == "Kafka":
        if not ((spec.get("kafka") or {}).get("listeners")):
            found.append("spec.kafka.listeners must list at least one listener")
    else:
        found.append(f"no schema for kafka.strimzi.io {kind}")
    return found


def _index(docs: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """(group, kind, namespace, name) of every manifest."""
    out = set()
    for d in docs:
        meta = d.get("metadata") or {}
        group = str(d.get("apiVersion", "")).rpartition("/")[0]
        out.add((group, d.get("kind", ""), meta.get("namespace", ""), meta.get("name", "")))
    return out


def check_references(docs: list[dict[str, Any]]) -> list[str]:
    """Sinks name a Service / KafkaSink / JobSink of the build; a ScaledObject's target is in
    the build; env sources exist; Strimzi resources name a Kafka of the build."""
    have = _index(docs)
    found: list[str] = []
    for d in docs:
        meta = d.get("metadata") or {}
        ns, who = meta.get("namespace", ""), f"{d.get('kind')}/{meta.get('name')}"
        spec = d.get("spec") or {}
        if is_kafka_source(d):
            refs = {
                "spec.sink": (spec.get("sink") or {}).get("ref"),
                "spec.delivery.deadLetterSink": (
                    (spec.get("delivery") or {}).get("deadLetterSink") or {}
                ).get("ref"),
            }
            for field, ref in refs.items():
                if not ref:
                    continue
                group = str(ref.get("apiVersion", "")).rpartition("/")[0]
                key = (group, ref.get("kind", ""), ref.get("namespace") or ns, ref.get("name", ""))
                if (group, key[1]) not in SINK_KINDS:
                    found.append(f"{who}: {field} must be a Knative Service, KafkaSink or JobSink")
                elif key not in have:
                    found.append(
                        f"{who}: {field} names {key[1]} {key[2]}/{key[3]}, which is not "
                        "in the build"
                    )
        target = spec.get("scaleTargetRef") if d.get("kind") == "ScaledObject" else None
        if target:
            group = str(target.get("apiVersion", "apps/v1")).rpartition("/")[0]
            kind = target.get("kind", "Deployment")
            if (group, kind, ns, target.get("name", "")) not in have:
                found.append(
                    f"{who}: spec.scaleTargetRef names {kind} {ns}/{target.get('name')}, which is "
                    "not in the build"
                )
        if d.get("kind") == "ScaledObject":
            for trigger in spec.get("triggers") or []:
                auth = (trigger.get("authenticationRef") or {}).get("name")
                if auth and ("keda.sh", "TriggerAuthentication", ns, auth) not in have:
                    found.append(
                        f"{who}: a trigger's authenticationRef names TriggerAuthentication "
                        f"{ns}/{auth}, which is not in the build"
                    )
        if d.get("kind") == "TriggerAuthentication":
            for ref in spec.get("secretTargetRef") or []:
                if ("", "Secret", ns, ref.get("name", "")) not in have:
                    found.append(
                        f"{who}: secretTargetRef {ref.get('parameter')} names Secret "
                        f"{ref.get('name')!r}, not in the build"
                    )
        for ref_kind, name in _env_refs(d):
            if ("", ref_kind, ns, name) not in have:
                found.append(
                    f"{who}: envFrom/valueFrom names {ref_kind} {name!r}, not in the build"
                )
        cluster = (meta.get("labels") or {}).get("strimzi.io/cluster")
        if cluster and ("kafka.strimzi.io", "Kafka", ns, cluster) not in have:
            found.append(f"{who}: strimzi.io/cluster names Kafka {cluster!r}, not in the build")
    return found


def _env_refs(doc: dict[str, Any]) -> list[tuple[str, str]]:
    refs: list[tuple[str, str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, kind in (
                ("configMapRef", "ConfigMap"),
                ("secretRef", "Secret"),
                ("configMapKeyRef", "ConfigMap"),
                ("secretKeyRef", "Secret"),
            ):
                if isinstance(node.get(key), dict) and node[key].get("name"):
                    refs.append((kind, node[key]["name"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc.get("spec"))
    return refs
