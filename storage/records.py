"""The registry's records as frozen dataclasses, and the pure rules they share.

A record is the JSON object stored for it: every typed field under its own key, anything else
the object holds kept in ``extra``, so reading a stored record and writing it back changes
nothing. ``Model``, ``Configuration``, ``Datasource`` and ``Run`` are here; the records a user
writes with defaults and allowed keywords (``Deployment``, ``InferenceSpec``) are in
``storage.specs``. No I/O here; ``storage.registry`` uses these, and unit tests call them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

from kafkaml.errors import Conflict, KmlError, ValidationFailed
from kafkaml.parsing import is_digits
from kafkaml.wire import ID_RE

SCHEMA_VERSION = 1
"""Written into every record as ``schema_version``; a reader refuses newer records."""

# -- run state machine ------------------------------------------------------------------------
CLAIMED, RUNNING, SUCCEEDED, FAILED = "claimed", "running", "succeeded", "failed"
RUN_STATES = (CLAIMED, RUNNING, SUCCEEDED, FAILED)
TERMINAL = frozenset({SUCCEEDED, FAILED})
_TRANSITIONS: dict[str, frozenset[str]] = {
    CLAIMED: frozenset({CLAIMED, RUNNING, FAILED}),
    RUNNING: frozenset({CLAIMED, RUNNING, SUCCEEDED, FAILED}),  # claimed: a lapsed lease taken over
    SUCCEEDED: frozenset(),
    FAILED: frozenset({CLAIMED, RUNNING}),  # only when the failure was not permanent
}

KERAS_JSON, KERAS_FILE = "keras_json", "keras_file"
"""A model's ``format``: its Keras JSON config, or an uploaded ``.keras`` file."""
COMPILE_FIELDS = ("optimizer", "loss", "metrics")
"""The keys of a model's compile spec."""
DEFAULT_OPTIMIZER = "adam"
"""The optimizer of a compile spec that names none."""


def now_iso() -> str:
    """UTC now, RFC 3339 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stamped(record: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A copy of ``record`` with ``fields``, ``schema_version`` and ``created`` (if unset)."""
    out = {**record, **fields, "schema_version": SCHEMA_VERSION}
    out.setdefault("created", now_iso())
    return out


# -- field checks: each returns the problem as "field: why", or None --------------------------
def is_int(value: Any) -> bool:
    """An integer that is not a bool (JSON ``true`` is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def int_problem(field: str, value: Any, minimum: int, maximum: int | None = None) -> str | None:
    """Why ``value`` is not an integer in ``[minimum, maximum]``, or None."""
    if not is_int(value) or value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        return f"{field}: {value!r} must be an integer at least {minimum}{upper}"
    return None


def unknown_problems(data: Mapping[str, Any], allowed: Any, where: str = "") -> list[str]:
    """One problem per key of ``data`` that is not ``allowed``."""
    names = ", ".join(sorted(allowed))
    return [
        f"{where}{key}: unknown field (allowed: {names})"
        for key in sorted(set(data) - set(allowed))
    ]


def name_problem(field: str, value: Any) -> str | None:
    """Why ``value`` cannot be a name or id (one safe S3 key segment), or None when it can."""
    if not isinstance(value, str) or not ID_RE.match(value) or ".." in value:
        return (
            f"{field}: {value!r} must be 1-100 characters of letters, digits, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return None


def check_name(field: str, value: Any) -> str:
    problem = name_problem(field, value)
    if problem:
        raise ValidationFailed(f"invalid {field}", [problem])
    return value


def require_object(data: Any, what: str) -> dict[str, Any]:
    """``data`` when it is a JSON object, else a 422 saying what it is."""
    if not isinstance(data, dict):
        raise ValidationFailed(
            f"{what} data must be a JSON object",
            [f"data: expected an object, got {type(data).__name__}"],
        )
    return data


def raise_if(problems: list[str], what: str) -> None:
    """One ``ValidationFailed`` listing every problem, when there is any."""
    if problems:
        raise ValidationFailed(f"invalid {what}: {len(problems)} problem(s)", problems)


@dataclass(frozen=True)
class ModelRef:
    """``name`` (latest version) or ``name@version``."""

    name: str
    version: int | None = None

    @classmethod
    def parse(cls, ref: Any) -> ModelRef:
        if not isinstance(ref, str) or not ref:
            raise ValidationFailed("invalid model ref", [f"model ref {ref!r} must be a string"])
        name, sep, ver = ref.partition("@")
        check_name("model", name)
        if not sep:
            return cls(name)
        if not is_digits(ver) or int(ver) < 1:
            raise ValidationFailed(
                "invalid model ref", [f"model ref {ref!r}: version must be a positive integer"]
            )
        return cls(name, int(ver))

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


def refs_problems(refs: Any) -> list[str]:
    """Problems of a ``models`` list: non-empty, every entry ``name`` or ``name@version``."""
    if not isinstance(refs, list) or not refs:
        return ["models: must be a non-empty list of model refs (name or name@version)"]
    problems = []
    for i, ref in enumerate(refs):
        try:
            ModelRef.parse(ref)
        except ValidationFailed as e:
            problems.extend(f"models[{i}]: {p}" for p in e.problems)
    return problems


def check_transition(run_id: str, current: dict[str, Any], new_status: str) -> None:
    """Raise ``Conflict`` unless ``current['status'] -> new_status`` is legal."""
    if new_status not in RUN_STATES:
        raise ValidationFailed(
            "invalid run status", [f"status: {new_status!r} is not one of {', '.join(RUN_STATES)}"]
        )
    old = current.get("status")
    allowed = _TRANSITIONS.get(old, frozenset())
    if new_status not in allowed or (old == FAILED and current.get("permanent", True)):
        raise Conflict(
            f"run {run_id}: illegal status change {old} -> {new_status}",
            run_id=run_id,
            current=old,
            requested=new_status,
        )


def check_schema_version(key: str, record: Any) -> dict[str, Any]:
    """The record at ``key``, refusing one written by a newer schema."""
    if not isinstance(record, dict):
        raise KmlError(f"record {key!r} is not a JSON object", status=500)
    version = record.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise KmlError(
            f"record {key!r} has schema_version {version!r}; this build reads up to "
            f"{SCHEMA_VERSION}",
            status=500,
        )
    return record


def same_content(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal apart from bookkeeping fields (``created``, ``updated``, ``schema_version``)."""
    skip = {"created", "updated", "schema_version"}
    return {k: v for k, v in a.items() if k not in skip} == {
        k: v for k, v in b.items() if k not in skip
    }


# -- the records ------------------------------------------------------------------------------
def _has_default(f: Field) -> bool:
    return f.default is not MISSING or f.default_factory is not MISSING


class Record:
    """``from_dict`` / ``to_dict`` / ``parse`` shared by the frozen records.

    An absent or null key reads as the field's default; a field without one is required. Lists
    are kept as tuples (the record is frozen), objects as private copies: treat them as
    read-only.
    """

    KIND: ClassVar[str] = "record"
    """What the record is called in messages."""
    OMITTED_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"created"})
    """Fields ``to_dict`` leaves out while they are None (absent from the stored JSON)."""
    SET_BY_REGISTRY: ClassVar[frozenset[str]] = frozenset({"created"})
    """Fields the registry sets; a user never sends them."""

    extra: dict[str, Any]

    @classmethod
    def _typed(cls) -> tuple[Field, ...]:
        return tuple(f for f in fields(cls) if f.name != "extra")  # type: ignore[arg-type]

    @classmethod
    def input_fields(cls) -> tuple[str, ...]:
        """The keys a user may send for this record."""
        return tuple(f.name for f in cls._typed() if f.name not in cls.SET_BY_REGISTRY)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The record a stored (or already checked) JSON object holds; 422 naming every
        required field it lacks."""
        values: dict[str, Any] = {}
        missing: list[str] = []
        for f in cls._typed():
            value = data.get(f.name)
            if value is None:
                if not _has_default(f):
                    missing.append(f"{f.name}: required")
                continue
            values[f.name] = tuple(value) if isinstance(f.default, tuple) else copy.deepcopy(value)
        if missing:
            raise ValidationFailed(f"incomplete {cls.KIND}", missing)
        names = {f.name for f in cls._typed()}
        extra = {k: copy.deepcopy(v) for k, v in data.items() if k not in names}
        return cls(**values, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object to store: same keys as the record was read from."""
        out = copy.deepcopy(self.extra)
        for f in self._typed():
            value = getattr(self, f.name)
            if value is None and f.name in self.OMITTED_WHEN_NONE:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else copy.deepcopy(value)
        return out

    @classmethod
    def problems(cls, data: Mapping[str, Any]) -> list[str]:
        """Every problem of user input for this record: unknown fields here, more in subclasses."""
        return unknown_problems(data, cls.input_fields())

    @classmethod
    def parse(cls, data: Any) -> Self:
        """User input as a record; one ``ValidationFailed`` lists every bad field."""
        data = require_object(data, cls.KIND)
        raise_if(cls.problems(data), cls.KIND)
        return cls.from_dict(data)


@dataclass(frozen=True)
class Model(Record):
    """One immutable model version: ``models/<name>/<version>/model.json``."""

    KIND = "model"
    OMITTED_WHEN_NONE = frozenset({"created", "keras_file"})

    name: str
    version: int
    description: str = ""
    format: str = KERAS_JSON
    keras_json: str | None = None
    """Exactly what ``model.to_json()`` gives (also for a ``.keras`` upload)."""
    keras_file: str | None = None
    """The S3 key of the ``.keras`` upload when ``format`` is ``keras_file``."""
    compile: dict[str, Any] = field(default_factory=dict)
    """``{optimizer, loss, metrics}``; the optimizer a name or a Keras optimizer config."""
    param_count: int | None = None
    input_shape: Any = None
    """A list with None for the batch axis; a list of lists when the model has several inputs."""
    output_shape: Any = None
    keras_version: str | None = None
    created: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Configuration(Record):
    """Models trained together: ``configurations/<name>.json``, versions pinned at creation."""

    KIND = "configuration"
    SET_BY_REGISTRY = frozenset({"created", "requested"})

    name: str
    description: str = ""
    models: tuple[str, ...] = ()
    """As sent: ``name`` or ``name@version``; as stored: pinned ``name@version``."""
    requested: tuple[str, ...] = ()
    """The refs as the user sent them."""
    created: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def problems(cls, data: Mapping[str, Any]) -> list[str]:
        problems = super().problems(data)
        if p := name_problem("name", data.get("name")):
            problems.append(p)
        if "description" in data and not isinstance(data["description"], str):
            problems.append("description: must be a string")
        return problems + refs_problems(data.get("models"))


@dataclass(frozen=True)
class Datasource(Record):
    """What the train function keeps of an accepted control message: ``datasources/<id>.json``."""

    KIND = "datasource"

    id: str
    control_message: dict[str, Any] = field(default_factory=dict)
    """The control message's JSON value, without its deployment (``ControlMessage.body()``)."""
    ranges: tuple[str, ...] = ()
    """Its offset ranges, ``topic:partition:start:end``."""
    created: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Run(Record):
    """One training run, ``runs/<run-id>/status.json``: claimed -> running -> succeeded | failed.

    The train function keeps more (ranges, attempt, lease, seed, splits, ...) in ``extra``.
    """

    KIND = "run"
    OMITTED_WHEN_NONE = frozenset({"created", "updated", "reason"})

    run_id: str
    status: str = CLAIMED
    deployment_id: str | None = None
    datasource_id: str | None = None
    reason: str | None = None
    permanent: bool = False
    """A failure that a redelivery would only repeat: the run is never claimed again."""
    models: dict[str, Any] = field(default_factory=dict)
    """``{folder: {model, metrics, artifacts}}`` once succeeded."""
    created: str | None = None
    updated: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
