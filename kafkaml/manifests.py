"""Manifests of one inference deployment (step E), in one of two modes.

``event`` (the default): a Knative Service and its KafkaSource, which delivers the input topic
to it one record per request with explicit retries and dead-letters to the KafkaSink named
after the DLQ topic. ``stream``: a Deployment whose pods each run the batched consumer loop
(``python -m functions.infer.stream``) in one consumer group, and a KEDA ``ScaledObject``
scaling it 0..N on that group's lag.

``render_inference_manifests(spec, settings)`` is pure: the same spec gives the same YAML.
The pods read their connection settings from the ConfigMap ``kml-settings`` and the S3
credentials from ``kml-s3-infer`` (never inlined); an event-mode Service mounts the hashed
tokens of the Secret ``kml-tokens`` and is cluster-local unless the spec asks ``public``. A
NetworkPolicy admits only Knative's namespaces to the pods. The image must be one the
operator allowed (``Settings.allowed_infer_images``): a spec naming another renders nothing.
When the settings name a Strimzi cluster (``strimzi_cluster``), a ``KafkaTopic`` for the input
and the output topic comes with them, so a KafkaSource never waits for a topic nobody creates.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import PurePosixPath
from typing import Any

import yaml

from kafkaml.errors import ValidationFailed
from kafkaml.events import BYTE_ARRAY_KEYS
from kafkaml.policies import TOKENS_MOUNT, network_policy, tokens_volume
from kafkaml.settings import Settings

SETTINGS_CONFIGMAP = "kml-settings"
S3_SECRET = "kml-s3-infer"  # infer's own, read-only key (storage.access)
KAFKA_SECRET = "kml-kafka-infer"
"""Infer's Kafka user (keys ``user``, ``password``, ``sasl.mechanism``, ``ca.crt``, as Knative's
KafkaSource reads them): its pods produce with it and its KafkaSource consumes with it."""
SERVICE_PREFIX = "kml-infer-"
CONTAINER_PORT = 8080
TIMEOUT_SECONDS = 300
"""Per-request cap of the inference Service (Knative allows at most 600)."""
DELIVERY = {
    "retry": 5,
    "backoffPolicy": "exponential",
    "backoffDelay": "PT0.5S",
    "timeout": "PT30S",
}
"""Retry 5 times at 1, 2, 4, 8, 16 s; each attempt bounded to 30 s."""
EVENT, STREAM = "event", "stream"
MODES = (EVENT, STREAM)
"""How a deployment reads its input topic: ``event``, one record per request to a Knative
Service through a KafkaSource; ``stream``, batched consumers in a Deployment scaled on lag."""
STREAM_COMMAND = ["python", "-m", "functions.infer.stream"]
PROBE_THREADS = 4
"""Request threads of an event-mode infer process beyond its prediction slots
(``infer_request_slots``): requests finding every slot busy are answered 503 at once, so these
threads are always free for the health probes."""
TOPIC_PARTITIONS = 3
"""Partitions of an inference topic created for a deployment (locally through the admin API,
on a cluster as a KafkaTopic): up to three consumers or stream replicas share the work."""
LAG_THRESHOLD = 10_000
"""Stream mode: records of consumer-group lag per replica KEDA aims at (a fraction of a second
of one replica's work); more lag starts more replicas, up to one per partition."""


@dataclass(frozen=True)
class Scaling:
    """How Knative scales the Service of one inference deployment; the defaults live here."""

    min_scale: int = 0
    """Replicas kept when no record arrives; 0 lets the Service scale to zero."""
    max_scale: int = 5
    """Most replicas the autoscaler starts."""
    target_concurrency: int = 10
    """Requests in flight per replica the autoscaler aims at; also the hard containerConcurrency."""

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> Scaling:
        """The scaling an inference spec asks for, the defaults for what it leaves out."""
        given = {f.name: int(spec[f.name]) for f in fields(cls) if spec.get(f.name) is not None}
        return cls(**given)


def service_name(inference_id: str) -> str:
    """Name of the Service, the KafkaSource and the consumer group of one deployment."""
    return f"{SERVICE_PREFIX}{inference_id}"


def render_inference_manifests(spec: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    """The Knative Service and KafkaSource serving the inference ``spec`` (event mode), or its
    Deployment and ScaledObject (stream mode)."""
    name = service_name(spec["id"])
    labels = {
        "app.kubernetes.io/name": "kml-infer",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/part-of": "kafka-ml-knative",
    }
    image_of(spec, settings)  # refuses an image the operator did not allow
    topics = [_kafka_topic(t, settings, labels) for t in inference_topics(spec)]
    if not settings.strimzi_cluster:
        topics = []
    if spec.get("mode", EVENT) == STREAM:
        auth = _trigger_authentication(settings, name, labels)
        return [
            _deployment(spec, settings, name, labels),
            *([auth] if auth else []),
            _scaled_object(spec, settings, name, labels, authenticated=auth is not None),
            network_policy(settings, name, labels, stream=True),
            *topics,
        ]
    return [
        _service(spec, settings, name, labels),
        _kafka_source(spec, settings, name, labels),
        network_policy(settings, name, labels, stream=False),
        *topics,
    ]


def image_problem(image: Any, settings: Settings) -> str | None:
    """Why an inference spec may not name ``image`` (None: it may; None means the default)."""
    allowed = settings.allowed_infer_images
    if image is None or image in allowed:
        return None
    return (
        f"image: {image!r} is not an allowed inference image (allowed: {', '.join(allowed)}; "
        "the operator sets KML_INFER_IMAGES)"
    )


def image_of(spec: Mapping[str, Any], settings: Settings) -> str:
    """The container image of a deployment: the spec's, if the operator allows it (422 else)."""
    if problem := image_problem(spec.get("image"), settings):
        raise ValidationFailed(
            "image not allowed", [problem], allowed=list(settings.allowed_infer_images)
        )
    return spec.get("image") or settings.infer_image


def inference_topics(spec: Mapping[str, Any]) -> list[str]:
    """The topics an inference deployment reads and writes (the dead-letter topic is shared)."""
    return list(dict.fromkeys([spec["input_topic"], spec["output_topic"]]))


INFER_WORKER = "functions.infer.worker.EventLoopWorker"
"""Infer's gunicorn worker: an event loop serving the prediction routes, ``--threads`` threads
for the Flask routes (the probes among them)."""


def infer_gunicorn_command(slots: int, port: int = CONTAINER_PORT) -> list[str]:
    """The event-mode container's command: gunicorn's infer worker with ``slots`` +
    ``PROBE_THREADS`` threads."""
    return [
        "python", "-m", "gunicorn", "-b", f"0.0.0.0:{port}", "--worker-class", INFER_WORKER,
        "--threads", str(slots + PROBE_THREADS), "--timeout", "660", "--graceful-timeout", "10",
        "functions.infer.app:create_app()",
    ]  # fmt: skip


def topic_resource_name(topic: str) -> str:
    """A Kubernetes name for ``topic``'s KafkaTopic: the topic itself when it is one, else a
    lower-cased form with a hash of the exact name (``My_Topic`` and ``my-topic`` differ)."""
    name = re.sub(r"[^a-z0-9.-]", "-", topic.lower()).strip(".-")[:200] or "topic"
    if name == topic:
        return name
    return f"{name}-{hashlib.sha256(topic.encode()).hexdigest()[:10]}"


def _kafka_topic(topic: str, settings: Settings, labels: dict[str, str]) -> dict[str, Any]:
    # Named after the topic alone: deployments sharing a topic render the same KafkaTopic.
    return {
        "apiVersion": "kafka.strimzi.io/v1beta2",
        "kind": "KafkaTopic",
        "metadata": {
            "name": topic_resource_name(topic),
            "namespace": settings.namespace,
            "labels": {
                "strimzi.io/cluster": settings.strimzi_cluster,
                "app.kubernetes.io/part-of": labels["app.kubernetes.io/part-of"],
            },
        },
        "spec": {"topicName": topic, "partitions": TOPIC_PARTITIONS, "replicas": 1},
    }


def _service(
    spec: dict[str, Any], settings: Settings, name: str, labels: dict[str, str]
) -> dict[str, Any]:
    scaling = Scaling.of(spec)
    # The queue-proxy lets containerConcurrency requests in at once: one slot each, and the
    # probes' threads on top (0 = unlimited: the settings' slots).
    slots = scaling.target_concurrency or settings.infer_request_slots
    ca_volumes, ca_mounts = kafka_ca_mount(settings, KAFKA_SECRET)
    container = {
        "name": "infer",
        "image": image_of(spec, settings),
        "command": infer_gunicorn_command(slots),
        "ports": [{"containerPort": CONTAINER_PORT}],
        "env": [
            {"name": "KML_INFERENCE_ID", "value": str(spec["id"])},
            {"name": "KML_INFER_REQUEST_SLOTS", "value": str(slots)},
            *kafka_user_env(settings, KAFKA_SECRET),
        ],
        "envFrom": [
            {"configMapRef": {"name": SETTINGS_CONFIGMAP}},
            {"secretRef": {"name": S3_SECRET}},
        ],
        "volumeMounts": [
            {"name": "tokens", "mountPath": TOKENS_MOUNT, "readOnly": True},
            *ca_mounts,
        ],
        "resources": {
            "requests": {"cpu": "250m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
        "readinessProbe": {
            "httpGet": {"path": "/health/readiness"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/health/liveness"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
    }
    visibility = (
        {} if spec.get("public") else {"networking.knative.dev/visibility": "cluster-local"}
    )
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": settings.namespace,
            "labels": {**labels, **visibility},
        },
        "spec": {
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "autoscaling.knative.dev/min-scale": str(scaling.min_scale),
                        "autoscaling.knative.dev/max-scale": str(scaling.max_scale),
                        "autoscaling.knative.dev/metric": "concurrency",
                        "autoscaling.knative.dev/target": str(scaling.target_concurrency),
                    },
                },
                "spec": {
                    "containerConcurrency": scaling.target_concurrency,
                    "timeoutSeconds": min(TIMEOUT_SECONDS, int(settings.request_timeout_s)),
                    "containers": [container],
                    "volumes": [tokens_volume(), *ca_volumes],
                },
            }
        },
    }


def _kafka_source(
    spec: dict[str, Any], settings: Settings, name: str, labels: dict[str, str]
) -> dict[str, Any]:
    servers = [s.strip() for s in settings.kafka_bootstrap.split(",") if s.strip()]
    return {
        "apiVersion": "sources.knative.dev/v1beta1",
        "kind": "KafkaSource",
        # Input keys are arbitrary bytes: Base64 keys survive the dispatcher's HTTP headers.
        "metadata": {
            "name": name,
            "namespace": settings.namespace,
            "labels": {**labels, **BYTE_ARRAY_KEYS},
        },
        "spec": {
            "bootstrapServers": servers,
            "topics": [spec["input_topic"]],
            "consumerGroup": name,
            **kafka_source_net(settings, KAFKA_SECRET),
            # A new consumer group starts at the topic's beginning (as Kafka-ML's inference does):
            # records sent before the source was ready are predicted, not skipped.
            "initialOffset": "earliest",
            # Predictions are independent and keyed by their input, so order does not matter:
            # up to 50 records in flight per partition let the infer micro-batcher fill batches.
            "ordering": "unordered",
            "delivery": {
                **DELIVERY,
                "deadLetterSink": {
                    "ref": {
                        "apiVersion": "eventing.knative.dev/v1alpha1",
                        "kind": "KafkaSink",
                        "name": settings.dlq_topic,
                    }
                },
            },
            "sink": {
                "ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": name},
                # With Eventing's OIDC on, each delivery's token is minted for this audience.
                **({"audience": settings.auth_oidc_audience} if _oidc(settings) else {}),
            },
        },
    }


def kafka_source_net(settings: Settings, secret: str) -> dict[str, Any]:
    """A KafkaSource's ``spec.net`` for the settings' Kafka security: SASL (user, password and
    mechanism from ``secret``) and TLS (its ``ca.crt`` when a CA file is set); nothing for
    plaintext. The values stay in the Secret, never in the manifest."""
    protocol = settings.kafka_security_protocol.strip().upper()
    net: dict[str, Any] = {}

    def ref(key: str) -> dict[str, Any]:
        return {"secretKeyRef": {"name": secret, "key": key}}

    if protocol.startswith("SASL_"):
        net["sasl"] = {
            "enable": True,
            "user": ref("user"),
            "password": ref("password"),
            "type": ref("sasl.mechanism"),
        }
    if protocol.endswith("SSL"):
        net["tls"] = {
            "enable": True,
            **({"caCert": ref("ca.crt")} if settings.kafka_ca_file else {}),
        }
    return {"net": net} if net else {}


def kafka_ca_mount(settings: Settings, secret: str) -> tuple[list[dict], list[dict]]:
    """A pod's (volumes, volumeMounts) putting the Secret's ``ca.crt`` at ``kafka_ca_file``, where
    the settings tell the Kafka clients to find it (TLS with a CA file only; else nothing)."""
    protocol = settings.kafka_security_protocol.strip().upper()
    if not (protocol.endswith("SSL") and settings.kafka_ca_file):
        return [], []
    path = PurePosixPath(settings.kafka_ca_file)
    volume = {
        "name": "kafka-ca",
        "secret": {"secretName": secret, "items": [{"key": "ca.crt", "path": path.name}]},
    }
    return [volume], [{"name": "kafka-ca", "mountPath": str(path.parent), "readOnly": True}]


def kafka_user_env(settings: Settings, secret: str) -> list[dict[str, Any]]:
    """A pod's ``KML_KAFKA_USERNAME``/``PASSWORD`` from ``secret`` when the settings use SASL."""
    if not settings.kafka_security_protocol.strip().upper().startswith("SASL_"):
        return []
    return [
        {"name": env, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        for env, key in (("KML_KAFKA_USERNAME", "user"), ("KML_KAFKA_PASSWORD", "password"))
    ]


def _oidc(settings: Settings) -> bool:
    return settings.auth_data_plane == "oidc" and bool(settings.auth_oidc_audience)


def _deployment(
    spec: dict[str, Any], settings: Settings, name: str, labels: dict[str, str]
) -> dict[str, Any]:
    probe = {"port": CONTAINER_PORT}
    ca_volumes, ca_mounts = kafka_ca_mount(settings, KAFKA_SECRET)
    container = {
        "name": "infer",
        "image": image_of(spec, settings),
        "command": STREAM_COMMAND,
        "ports": [{"name": "http", "containerPort": CONTAINER_PORT}],
        "env": [
            {"name": "KML_INFERENCE_ID", "value": str(spec["id"])},
            {"name": "KML_INFER_STREAM_PORT", "value": str(CONTAINER_PORT)},
            *kafka_user_env(settings, KAFKA_SECRET),
        ],
        "envFrom": [
            {"configMapRef": {"name": SETTINGS_CONFIGMAP}},
            {"secretRef": {"name": S3_SECRET}},
        ],
        **({"volumeMounts": ca_mounts} if ca_mounts else {}),
        "resources": {
            "requests": {"cpu": "1", "memory": "512Mi"},
            "limits": {"cpu": "2", "memory": "1Gi"},
        },
        "readinessProbe": {
            "httpGet": {"path": "/health/readiness", **probe},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/health/liveness", **probe},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": labels},
        "spec": {
            # KEDA owns the count from here on: zero replicas until the group has lag.
            "replicas": Scaling.of(spec).min_scale,
            "selector": {"matchLabels": {"app.kubernetes.io/instance": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    # SIGTERM: the pod finishes its batch, commits and leaves the group.
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                    **({"volumes": ca_volumes} if ca_volumes else {}),
                },
            },
        },
    }


KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
"""KEDA's Kafka scaler's name for each SASL mechanism the functions use."""


def keda_kafka_security(settings: Settings) -> dict[str, str]:
    """The Kafka trigger's ``sasl`` and ``tls`` for the settings' protocol (none: plaintext)."""
    protocol = settings.kafka_security_protocol.strip().upper()
    out = {}
    if protocol.startswith("SASL_"):
        mechanism = settings.kafka_sasl_mechanism.strip().upper()
        if mechanism not in KEDA_SASL:
            raise ValidationFailed(
                f"KEDA's Kafka scaler cannot log in with {settings.kafka_sasl_mechanism!r}",
                [f"kafka_sasl_mechanism: one of {', '.join(KEDA_SASL)} for stream mode"],
            )
        out["sasl"] = KEDA_SASL[mechanism]
    if protocol.endswith("SSL"):
        out["tls"] = "enable"
    return out


def _trigger_authentication(
    settings: Settings, name: str, labels: dict[str, str]
) -> dict[str, Any] | None:
    """KEDA's credentials for reading the group's lag: infer's own Kafka user and CA, from the
    Secret its pods use (``KAFKA_SECRET``), so the scaler sees no more than the consumers do.
    None for a plaintext Kafka without a CA."""
    security = keda_kafka_security(settings)
    refs = [("username", "user"), ("password", "password")] if "sasl" in security else []
    if "tls" in security and settings.kafka_ca_file:
        refs.append(("ca", "ca.crt"))
    if not refs:
        return None
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": labels},
        "spec": {
            "secretTargetRef": [
                {"parameter": parameter, "name": KAFKA_SECRET, "key": key}
                for parameter, key in refs
            ]
        },
    }


def _scaled_object(
    spec: dict[str, Any],
    settings: Settings,
    name: str,
    labels: dict[str, str],
    authenticated: bool = False,
) -> dict[str, Any]:
    scaling = Scaling.of(spec)
    servers = [s.strip() for s in settings.kafka_bootstrap.split(",") if s.strip()]
    trigger: dict[str, Any] = {
        "type": "kafka",
        "metadata": {
            "bootstrapServers": ",".join(servers),
            "consumerGroup": name,
            "topic": spec["input_topic"],
            "lagThreshold": str(LAG_THRESHOLD),
            "activationLagThreshold": "0",
            # A group that has committed nothing yet reads from the beginning (as the consumers
            # do), so records sent before it existed count as lag.
            "offsetResetPolicy": "earliest",
            **keda_kafka_security(settings),
        },
    }
    if authenticated:
        trigger["authenticationRef"] = {"name": name}
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": labels},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicaCount": scaling.min_scale,
            "maxReplicaCount": scaling.max_scale,
            "pollingInterval": 10,
            "cooldownPeriod": 300,
            "triggers": [trigger],
        },
    }


def to_yaml(docs: list[dict[str, Any]]) -> str:
    """A multi-document YAML string (``kubectl apply -f -`` takes it as is)."""
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False)
