"""The records a user writes: a training ``Deployment`` and an ``InferenceSpec``.

Their defaults, limits and allowed keywords are defined here once; the register function
checks events with ``problems``, the train function reads stored deployments with
``from_dict`` and the CLI shows the same defaults. What the Kafka-ML wire and the rendered
manifests need themselves (topic names, input formats, the scaling defaults) lives in
``kafkaml`` and is read from there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from kafkaml.manifests import EVENT, MODES, SERVICE_PREFIX, Scaling, image_problem
from kafkaml.parsing import is_digits
from kafkaml.settings import Settings
from kafkaml.wire import FORMATS, TOPIC_RE
from storage.records import Record, int_problem, is_int, name_problem, refs_problems

FIT_KEYWORDS: Mapping[str, int | None] = MappingProxyType(
    {
        "initial_epoch": 0,
        "validation_freq": 1,
        "steps_per_epoch": 1,
        "validation_steps": 1,
        "class_weight": None,
    }
)
"""The keyword arguments a deployment may pass to Keras ``fit``, each with its least value
(``class_weight`` maps class indices to weights); anything else could run code or hang."""
EVALUATE_KEYWORDS: Mapping[str, int | None] = MappingProxyType({"steps": 1})
"""The keyword arguments a deployment may pass to Keras ``evaluate``."""

_SCALING = Scaling()
INFERENCE_ID_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")
"""DNS-1035-safe once prefixed with the Service prefix (Knative Service names)."""
IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")


def cap_problems(
    data: Mapping[str, Any], problems: list[str], caps: tuple[tuple[str, int, str], ...]
) -> list[str]:
    """Each field over the operator's cap ``(field, cap, setting)``, naming the cap and its
    setting; a field already wrong for another reason is not named twice."""
    named = {p.split(":", 1)[0] for p in problems}
    return [
        f"{name}: {data[name]} is above the cap of {cap} (KML_{setting.upper()})"
        for name, cap, setting in caps
        if name not in named and is_int(data.get(name)) and data[name] > cap
    ]


def keyword_problems(field: str, kwargs: Any, allowed: Mapping[str, int | None]) -> list[str]:
    """Problems of ``fit_kwargs`` / ``evaluate_kwargs``: each unknown keyword named."""
    if kwargs is None:
        return []
    if not isinstance(kwargs, dict):
        return [f"{field}: must be an object of keyword arguments"]
    problems: list[str] = []
    for key, value in kwargs.items():
        if key not in allowed:
            problems.append(f"{field}.{key}: not allowed (allowed: {', '.join(sorted(allowed))})")
        elif allowed[key] is None:  # class_weight
            if not isinstance(value, dict) or not all(
                is_digits(str(k)) and isinstance(w, (int, float)) and not isinstance(w, bool)
                for k, w in value.items()
            ):
                problems.append(f"{field}.{key}: must map class indices to numbers")
        elif p := int_problem(f"{field}.{key}", value, allowed[key]):
            problems.append(p)
    return problems


@dataclass(frozen=True)
class Deployment(Record):
    """Models to train and how: ``deployments/<id>.json``, immutable.

    ``id`` is a string; an integer id (Kafka-ML style) reads as its decimal string, and small
    integer ids are what Kafka-ML's one-byte record keys address.
    """

    KIND = "deployment"
    LIMITS = MappingProxyType(
        {"batch_size": (1, 1_000_000), "epochs": (1, 100_000), "seed": (0, 2**32 - 1)}
    )
    """Inclusive bounds of the integer fields."""

    id: str | None = None
    """Chosen by the user, else the registry takes the next free small integer."""
    description: str = ""
    configuration: str | None = None
    """A configuration's name, or None when ``models`` are named directly."""
    models: tuple[str, ...] = ()
    """As sent: refs; as stored: pinned ``name@version`` refs (those of the configuration)."""
    batch_size: int = 32
    epochs: int = 1
    shuffle: bool = True
    seed: int | None = None
    """None: each run derives its seed from its run id (reproducible per run)."""
    learning_rate: float | None = None
    """None: the optimizer's own default."""
    fit_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra ``fit`` keywords, only those of ``FIT_KEYWORDS``."""
    evaluate_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra ``evaluate`` keywords, only those of ``EVALUATE_KEYWORDS``."""
    created: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if is_int(self.id):
            object.__setattr__(self, "id", str(self.id))

    @classmethod
    def problems(cls, data: Mapping[str, Any], settings: Settings | None = None) -> list[str]:
        """Every problem of a ``kml.deployment.create`` body (over the settings' caps too)."""
        problems = super().problems(data)
        if data.get("id") is not None:
            value = str(data["id"]) if is_int(data["id"]) else data["id"]
            if p := name_problem("id", value):
                problems.append(p)
        has_conf, has_models = data.get("configuration") is not None, data.get("models") is not None
        if has_conf == has_models:
            problems.append("configuration / models: exactly one is required")
        if has_conf and (p := name_problem("configuration", data["configuration"])):
            problems.append(p)
        if has_models:
            problems.extend(refs_problems(data["models"]))
        if "description" in data and not isinstance(data["description"], str):
            problems.append("description: must be a string")
        for name in ("batch_size", "epochs"):
            if name in data and (p := int_problem(name, data[name], *cls.LIMITS[name])):
                problems.append(p)
        if "shuffle" in data and not isinstance(data["shuffle"], bool):
            problems.append("shuffle: must be true or false")
        if data.get("seed") is not None and (
            p := int_problem("seed", data["seed"], *cls.LIMITS["seed"])
        ):
            problems.append(p)
        lr = data.get("learning_rate")
        if lr is not None and (not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr <= 0):
            problems.append(f"learning_rate: {lr!r} must be a positive number")
        problems.extend(keyword_problems("fit_kwargs", data.get("fit_kwargs"), FIT_KEYWORDS))
        problems.extend(
            keyword_problems("evaluate_kwargs", data.get("evaluate_kwargs"), EVALUATE_KEYWORDS)
        )
        caps = settings or Settings()
        return problems + cap_problems(
            data,
            problems,
            (
                ("epochs", caps.train_max_epochs, "train_max_epochs"),
                ("batch_size", caps.train_max_batch_size, "train_max_batch_size"),
            ),
        )

    def keyword_problems(self) -> list[str]:
        """Problems of the stored ``fit_kwargs`` / ``evaluate_kwargs`` (checked before fitting)."""
        return keyword_problems("fit_kwargs", self.fit_kwargs, FIT_KEYWORDS) + keyword_problems(
            "evaluate_kwargs", self.evaluate_kwargs, EVALUATE_KEYWORDS
        )


@dataclass(frozen=True)
class InferenceSpec(Record):
    """One inference deployment: ``inference/<id>.json`` (its manifests at ``<id>.yaml``).

    The scaling defaults are ``kafkaml.manifests.Scaling``'s: the renderer reads the same ones.
    """

    KIND = "inference spec"
    OMITTED_WHEN_NONE = frozenset({"created", "id", "image", "public", "stream"})
    LIMITS = MappingProxyType(
        {"min_scale": (0, 1000), "max_scale": (1, 1000), "target_concurrency": (1, 1000)}
    )
    """Inclusive bounds of the scaling fields."""

    run_id: str
    """The succeeded training run whose model is served; for a spec that follows a ``stream``,
    the run its pointer named when the spec was created (None when it had promoted nothing;
    the service reads the pointer)."""
    model: str
    """The run's model folder; the run's only model when not given."""
    input_format: str
    """One of ``kafkaml.wire.FORMATS``; the run's datasource's when not given."""
    input_config: dict[str, Any]
    input_topic: str
    output_topic: str
    id: str | None = None
    min_scale: int = _SCALING.min_scale
    max_scale: int = _SCALING.max_scale
    target_concurrency: int = _SCALING.target_concurrency
    mode: str = EVENT
    """One of ``kafkaml.manifests.MODES``: ``event`` (a Knative Service fed by a KafkaSource)
    or ``stream`` (batched consumers in a Deployment that KEDA scales on lag)."""
    image: str | None = None
    """The container image of the rendered Service; the settings' infer image when None. Only
    an image the operator allowed (``Settings.allowed_infer_images``) is accepted."""
    public: bool | None = None
    """True: the Service has a route outside the cluster (its callers still need a ``predict``
    token); otherwise it is cluster-local."""
    stream: str | None = None
    """An online stream to follow instead of pinning a run: the service serves the stream's
    promoted model and swaps to each newly promoted version (``infer_follow_s``). Sent instead
    of ``run_id``; stored with the promoted run of the moment as ``run_id`` (None while the
    stream has promoted nothing: the service is not ready until it has)."""
    created: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def stored_fields(cls) -> tuple[str, ...]:
        """The keys every stored spec holds (``id`` is the registry's when not chosen; a spec
        without ``mode`` was stored before there were modes: it is event mode)."""
        optional = cls.OMITTED_WHEN_NONE | {"mode"}  # "stream" among them: runs pin no stream
        return tuple(f for f in cls.input_fields() if f not in optional)

    @classmethod
    def stored_problems(
        cls, data: Mapping[str, Any], settings: Settings | None = None
    ) -> list[str]:
        """Every problem of a stored spec's user fields: as ``problems``, except that a spec
        following a ``stream`` also holds the run its pointer named at creation (None when the
        stream had promoted nothing yet)."""
        if data.get("stream") is None:
            return cls.problems(data, settings)
        problems = cls.problems({k: v for k, v in data.items() if k != "run_id"}, settings)
        run_id = data.get("run_id")  # None: the stream had promoted nothing yet
        if run_id is not None and (p := name_problem("run_id", run_id)):
            problems.append(p)
        return problems

    @classmethod
    def problems(cls, data: Mapping[str, Any], settings: Settings | None = None) -> list[str]:
        """Every problem of a ``kml.inference.create`` body (model and input may come later),
        against the settings' caps and allowed images too."""
        problems = super().problems(data)
        caps = settings or Settings()
        if data.get("public") is not None and not isinstance(data["public"], bool):
            problems.append("public: must be true or false")
        if data.get("id") is not None and not (
            isinstance(data["id"], str) and INFERENCE_ID_RE.match(data["id"])
        ):
            problems.append(
                f"id: {data['id']!r} must be 1-40 lower-case letters, digits or '-' "
                f"(it names the Knative Service {SERVICE_PREFIX}<id>)"
            )
        has_run, has_stream = data.get("run_id") is not None, data.get("stream") is not None
        if has_run and has_stream:
            problems.append(
                "run_id / stream: give one, not both (a stream's deployment serves the run its "
                "pointer promoted)"
            )
        elif not has_run and not has_stream:
            problems.append(
                "run_id / stream: one is required (a run to pin, or a stream to follow)"
            )
        if has_run and (p := name_problem("run_id", data["run_id"])):
            problems.append(p)
        if has_stream and (p := name_problem("stream", data["stream"])):
            problems.append(p)
        if data.get("model") is not None and (p := name_problem("model", data["model"])):
            problems.append(p)
        fmt = data.get("input_format")
        if fmt is not None and fmt not in FORMATS:
            problems.append(f"input_format: {fmt!r} must be one of {', '.join(FORMATS)}")
        if data.get("input_config") is not None and not isinstance(data["input_config"], dict):
            problems.append("input_config: must be an object")
        for name in ("input_topic", "output_topic"):
            value = data.get(name)
            if not isinstance(value, str) or not TOPIC_RE.match(value):
                problems.append(f"{name}: {value!r} must be a Kafka topic name")
        if data.get("input_topic") is not None and data.get("input_topic") == data.get(
            "output_topic"
        ):
            problems.append("output_topic: must differ from input_topic")
        lo = data.get("min_scale", _SCALING.min_scale)
        hi = data.get("max_scale", _SCALING.max_scale)
        for name, value in (("min_scale", lo), ("max_scale", hi)):
            if p := int_problem(name, value, *cls.LIMITS[name]):
                problems.append(p)
        if is_int(lo) and is_int(hi) and lo > hi:
            problems.append(f"min_scale: {lo} is above max_scale {hi}")
        target = data.get("target_concurrency", _SCALING.target_concurrency)
        if p := int_problem("target_concurrency", target, *cls.LIMITS["target_concurrency"]):
            problems.append(p)
        mode = data.get("mode")
        if mode is not None and mode not in MODES:
            problems.append(f"mode: {mode!r} must be one of {', '.join(MODES)}")
        image = data.get("image")
        if image is not None and (not isinstance(image, str) or not IMAGE_RE.match(image)):
            problems.append(f"image: {image!r} is not a container image reference")
        elif p := image_problem(image, caps):
            problems.append(p)
        return problems + cap_problems(
            data,
            problems,
            (
                ("min_scale", caps.infer_max_scale, "infer_max_scale"),
                ("max_scale", caps.infer_max_scale, "infer_max_scale"),
                ("target_concurrency", caps.infer_max_concurrency, "infer_max_concurrency"),
            ),
        )
