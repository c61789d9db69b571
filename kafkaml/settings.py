"""One settings object, built once from the environment (prefix ``KML_``).

Functions receive a ``Settings`` at app creation; nothing below reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

PREFIX = "KML_"


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "kml")


@dataclass(frozen=True)
class Settings:
    """Every knob of the project. The environment variable is ``KML_`` + the upper-cased name."""

    kafka_bootstrap: str = "127.0.0.1:9092"
    """Kafka bootstrap servers the functions, the bridge and the CLI connect to."""
    s3_endpoint: str = "http://127.0.0.1:9000"
    """S3-compatible endpoint (MinIO) holding the registry and the artifacts."""
    s3_access_key: str = "kmladmin"
    """S3 access key (MinIO root user for the local stack)."""
    s3_secret_key: str = field(default="kmladmin-secret", repr=False)
    """S3 secret key. Never logged, never in an error body."""
    s3_region: str = "us-east-1"
    """Region name sent to the S3 endpoint."""
    bucket: str = "kml"
    """The one bucket holding models, configurations, deployments, datasources, runs."""
    control_topic: str = "kml-control"
    """Topic of Kafka-ML control messages (triggers training)."""
    models_topic: str = "kml-models"
    """Topic of register CloudEvents."""
    results_topic: str = "kml-results"
    """Topic of training progress / completed / failed events."""
    dlq_topic: str = "kml-dlq"
    """Dead-letter topic: records that could not be processed, with the reason."""
    namespace: str = "default"
    """Kubernetes namespace the functions run in (used in event sources and manifests)."""
    max_body_bytes: int = 8 * 1024 * 1024
    """Largest request body register, train and the dashboard accept (413 above, naming this
    setting); infer has its own, ``infer_max_body_bytes``."""
    request_timeout_s: float = 600.0
    """Knative's request timeout; training that cannot fit must use the JobSink route."""
    kafka_security_protocol: str = "PLAINTEXT"
    """Kafka listener protocol every client uses: ``PLAINTEXT``, ``SASL_PLAINTEXT``, ``SSL`` or
    ``SASL_SSL``. The local stack's broker takes ``SASL_PLAINTEXT`` too (SCRAM users made at
    format time)."""
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    """SASL mechanism with SASL: ``SCRAM-SHA-512``, ``SCRAM-SHA-256``, ``PLAIN``."""
    kafka_username: str = ""
    """SASL user (a Strimzi ``KafkaUser`` per function on a cluster)."""
    kafka_password: str = field(default="", repr=False)
    """SASL password. Never logged, never in an error body."""
    kafka_ca_file: str = ""
    """PEM file of the CA that signed the brokers' certificates (``SSL``, ``SASL_SSL``); empty:
    the system's trust store."""
    kafka_timeout_s: float = 30.0
    """Bound on every Kafka wait (metadata, watermarks, delivery confirmation)."""
    infer_produce_timeout_s: float = 10.0
    """Infer: longest a Kafka-path request waits for Kafka to confirm its prediction (503 after).
    Kept well below the inference KafkaSource's 30 s delivery timeout, so a request never outlives
    the attempt it answers and a retry never overlaps it."""
    infer_request_slots: int = 100
    """Infer: prediction requests (Kafka path, CloudEvent, KServe) served at once; one more is
    answered 503 at once (retried). The process runs ``PROBE_THREADS`` more threads than slots,
    so the health probes never queue behind requests blocked on Kafka. The default covers the
    local bridge's most records in flight (99); a cluster's Service sets it to its
    containerConcurrency."""
    inference_id: str = ""
    """The inference deployment an infer process serves."""
    model_cache_dir: str = field(default_factory=lambda: str(Path(_default_cache_dir()) / "models"))
    """Local cache of trained models downloaded by infer."""
    infer_max_batch: int = 256
    """Infer: most rows the micro-batcher puts into one model call."""
    infer_batch_wait_ms: float = 2.0
    """Infer: how long the micro-batcher waits for more requests before calling the model."""
    infer_stream_batch: int = 10_000
    """Stream mode: most records one poll takes; they are decoded and predicted together."""
    infer_stream_wait_ms: float = 20.0
    """Stream mode: how long a poll waits for the first record when none has arrived (a poll
    takes what has arrived, up to ``infer_stream_batch``, and never waits for a full batch)."""
    infer_stream_port: int = 8080
    """Stream mode: the port of ``/metrics`` and the health probes."""
    infer_follow_s: float = 5.0
    """Infer: how often a deployment that follows an online stream checks the stream's promoted
    pointer (one conditional GET, 304 while nothing changed); a promotion is served within this
    plus the new model's load time."""
    state_dir: str = ".kml"
    """Local stack: data, logs and PID files (git-ignored)."""
    cache_dir: str = field(default_factory=_default_cache_dir)
    """Local stack: downloaded Kafka jars and the built MinIO binary (outside the repository)."""
    kafka_port: int = 9092
    """Local stack: the broker's PLAINTEXT listener."""
    kafka_controller_port: int = 9093
    """Local stack: the KRaft controller listener."""
    minio_port: int = 9000
    """Local stack: the MinIO S3 API."""
    minio_console_port: int = 9001
    """Local stack: the MinIO console."""
    register_port: int = 8081
    """Local stack: the register function."""
    register_url: str = ""
    """URL of the register function the CLI and the dashboard talk to; empty =
    http://127.0.0.1:<register_port>."""
    strimzi_cluster: str = ""
    """The Strimzi ``Kafka`` the cluster's topics belong to (label ``strimzi.io/cluster``). When
    set, an inference deployment's manifests carry a ``KafkaTopic`` for its input and output
    topics; when empty, those topics must exist before the KafkaSource can become ready."""
    infer_image: str = "kml/infer:0.1.0"
    """Container image of the inference Services register renders (a spec may name another of
    ``infer_images``)."""
    train_port: int = 8082
    """Local stack: the train function."""
    dashboard_port: int = 8083
    """Local stack: the dashboard (web pages over register's read API and the results topic)."""
    infer_port: int = 8090
    """Local stack: the first port given to locally deployed inference services."""
    local_parts: str = "all"
    """Local stack: ``all`` (Kafka, MinIO, functions, bridge) or ``infrastructure``."""
    log_level: str = "INFO"
    """Log level of the functions."""
    train_record_epoch_budget_s: float = 0.0005
    """Train: estimated seconds per record, per epoch, per model; sizes work for the HTTP route."""
    train_http_reserve_s: float = 60.0
    """Train: seconds of the request timeout kept for reading data and saving artifacts."""
    train_lease_s: float = 60.0
    """Train: how long a run's claim holds without renewal. A training attempt renews it every
    third of this; once an attempt dies its lease lapses within this, and the next delivery of
    the control message takes the run over. Kept below the control KafkaSource's retry window,
    so the dispatcher's retries outlast a dead attempt's lease."""
    train_arrival_grace_s: float = 20.0
    """Train: how long after a control message was produced (its Kafka timestamp) a deployment
    not yet created, or an ``end`` above the high watermark, is taken for something still on its
    way (retried: 404 / 503) rather than a mistake (422 and ``kml.training.failed``). Kept below
    the control KafkaSource's retry window, so the last retry gives the permanent answer."""
    register_validate_timeout_s: float = 180.0
    """Register: how long one model's validation child may take (Keras import included); past
    it the child and its process group are killed and the registration is answered 503."""
    register_event_hold_s: float = 240.0
    """Register: how long a delivery's claim on a CloudEvent (source, id) holds while it is being
    handled; a duplicate meanwhile waits or is told to retry later (409). A claim whose handler
    died lapses after this, so a later redelivery handles the event. Kept above
    ``register_validate_timeout_s``: a live handler always finishes within its claim."""
    register_event_wait_s: float = 20.0
    """Register: how long a duplicate delivery waits for the first delivery's answer before it
    answers 409 (retried). Kept below the models KafkaSource's 30 s delivery timeout."""
    register_keras_member_max_bytes: int = 64 * 1024 * 1024
    """Register: largest uncompressed size of a ``.keras`` archive's weights member, declared in
    its zip header and as read (the HDF5 datasets' declared sizes together too); 422 above."""
    register_keras_config_max_bytes: int = 8 * 1024 * 1024
    """Register: largest uncompressed size of a ``.keras`` archive's ``config.json`` and
    ``metadata.json``, declared and as read (a zip bomb stops here); 422 above."""
    auth: str = "on"
    """``on``: every call but the health probes and ``/metrics`` carries a bearer token the
    function knows (401 without, 403 without the scope). ``off`` admits anyone: for a unit test
    of the switch only, never a deployment."""
    auth_tokens_file: str = ""
    """The hashed tokens a function admits: JSON ``{sha256(token): {"name", "scopes"}}`` (on a
    cluster the Secret ``kml-tokens`` mounted as a file; ``kml dev up`` writes
    ``<state_dir>/auth/tokens.json``). Re-read when it changes. Empty: no token is admitted."""
    auth_token: str = field(default="", repr=False)
    """The bearer token this process sends (the CLI, the demo, the dashboard to register, the
    local bridge's deliveries); empty: the local stack's ``<state_dir>/auth/admin.token``.
    Never logged, never in an error body."""
    auth_data_plane: str = "token"
    """How ``POST /`` deliveries from KafkaSource are admitted: ``token`` (a bearer token with
    scope ``deliver``, as the local bridge sends), ``network`` (without a token: only the
    NetworkPolicy, which admits Knative's namespaces alone, vouches for the sender) or ``oidc``
    (Knative Eventing's OIDC sender token, a JWT checked against ``auth_oidc_*``)."""
    auth_oidc_issuer: str = ""
    """``oidc``: the issuer of Knative Eventing's sender tokens (the cluster's service account
    issuer, e.g. https://kubernetes.default.svc.cluster.local)."""
    auth_oidc_audience: str = ""
    """``oidc``: the audience the sender token must name (the function's sink audience)."""
    auth_oidc_jwks_file: str = ""
    """``oidc``: a file holding the issuer's JWKS (the cluster's ``/openid/v1/jwks``, kept in a
    ConfigMap); re-read when it changes."""
    infer_max_body_bytes: int = 4 * 1024 * 1024
    """Infer: largest request body (413 above, naming this setting)."""
    infer_max_instances: int = 1024
    """Infer: most instances in one predict request (KServe or ``kml.inference.request``);
    413 above, naming this setting."""
    infer_interpreter_cache: int = 16
    """Infer: most LiteRT interpreters kept per model (one per batch bucket, and per instance
    shape for a model with dynamic dimensions); the least recently used goes first."""
    infer_max_concurrency: int = 100
    """Register: highest ``target_concurrency`` (the Service's containerConcurrency) an
    inference spec may ask for (422 above); one pod's 1 GiB holds this many requests."""
    infer_max_scale: int = 20
    """Register: highest ``max_scale`` (and ``min_scale``) an inference spec may ask for."""
    infer_images: str = ""
    """Register: comma-separated container images an inference spec may name in ``image``
    (422 otherwise, naming them); empty: only ``infer_image``. The operator chooses, never the
    request."""
    train_max_records: int = 1_000_000
    """Train: most records one run reads (a control message over more is refused with 422
    before anything is read)."""
    train_max_bytes: int = 512 * 1024 * 1024
    """Train: most bytes (keys and values) one run reads from Kafka; 422 once it is passed."""
    train_max_epochs: int = 1000
    """Register: most ``epochs`` a deployment may ask for (422 above)."""
    train_max_batch_size: int = 65_536
    """Register: largest ``batch_size`` a deployment may ask for (422 above)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build from ``KML_*`` variables; a value that does not parse fails at once, naming it."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None:
                continue
            kind = type(getattr(_DEFAULTS, f.name))
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise ValueError(
                    f"{PREFIX}{f.name.upper()}={raw!r} is not a valid {kind.__name__}"
                ) from None
        values.update(overrides)
        return cls(**values)

    @property
    def register_address(self) -> str:
        """Where the register function answers: ``register_url``, else the local stack's port."""
        return (self.register_url or f"http://127.0.0.1:{self.register_port}").rstrip("/")

    @property
    def allowed_infer_images(self) -> tuple[str, ...]:
        """The images an inference spec may name: ``infer_images``, else ``infer_image`` alone."""
        named = [i.strip() for i in self.infer_images.split(",") if i.strip()]
        return tuple(dict.fromkeys(named or [self.infer_image]))

    @property
    def kafka(self) -> KafkaBootstrap:
        """The bootstrap servers with the security config every Kafka client of these settings
        needs (``kafkaml.kafka.client_config`` applies it)."""
        return KafkaBootstrap(self.kafka_bootstrap, kafka_security(self))

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """The ``KML_*`` variables that rebuild these settings in a child process."""
        return {PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in fields(self)}


class KafkaBootstrap(str):
    """Bootstrap servers (the string every message names) that carry the security part of a
    client's config, so each client built from them connects as these settings say, and nothing
    that prints them shows the password."""

    security: dict[str, str]

    def __new__(cls, servers: str, security: Mapping[str, str] | None = None) -> KafkaBootstrap:
        self = super().__new__(cls, servers)
        self.security = dict(security or {})
        return self


KAFKA_PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT", "SSL", "SASL_SSL")


def kafka_security(settings: Settings) -> dict[str, str]:
    """librdkafka's security properties for ``settings`` (empty for plaintext)."""
    protocol = settings.kafka_security_protocol.strip().upper()
    if protocol not in KAFKA_PROTOCOLS:
        raise ValueError(
            f"KML_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol!r} is none of "
            + ", ".join(KAFKA_PROTOCOLS)
        )
    if protocol == "PLAINTEXT":
        return {}
    out = {"security.protocol": protocol}
    if protocol.startswith("SASL_"):
        if not settings.kafka_username:
            raise ValueError(f"KML_KAFKA_USERNAME: required with {protocol}")
        out["sasl.mechanism"] = settings.kafka_sasl_mechanism
        out["sasl.username"] = settings.kafka_username
        out["sasl.password"] = settings.kafka_password
    if protocol.endswith("SSL") and settings.kafka_ca_file:
        out["ssl.ca.location"] = settings.kafka_ca_file
    return out


_DEFAULTS = Settings()
