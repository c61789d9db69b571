"""HTML forms -> register event data, and register's problems -> the form fields they name.

The dashboard does not validate: it turns what was typed into the event's fields (a number
that does not read as one is sent as typed, so register names it) and shows register's
answer. Each of register's problems starts with the field it is about (``batch_size: ...``,
``compile.loss: ...``, ``keras_json / keras_b64: ...``); :func:`place_problems` puts it next
to that field, and any problem naming no field of the form above the form.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from werkzeug.datastructures import FileStorage, MultiDict

_INT = re.compile(r"^[+-]?\d+$")
_SPLIT = re.compile(r"\s*(?:/|\bor\b|,)\s*")
_LIST = re.compile(r"[,\s]+")


@dataclass
class FormErrors:
    """Register's problems, by the form field they name; ``general`` names no field."""

    message: str = ""
    by_field: dict[str, list[str]] = field(default_factory=dict)
    general: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.message or self.problems)

    def of(self, name: str) -> list[str]:
        return self.by_field.get(name, [])


def place_problems(
    message: str,
    problems: Iterable[str],
    fields: Iterable[str],
    aliases: Mapping[str, str] | None = None,
) -> FormErrors:
    """Each problem under every form field its ``field:`` prefix names (``aliases`` maps an
    event field to the form field that fills it); the rest under ``general``."""
    names = {f: f for f in fields} | dict(aliases or {})
    out = FormErrors(message=message, problems=list(problems))
    for problem in out.problems:
        subject = problem.split(": ", 1)[0] if ": " in problem else ""
        placed = {
            names[match]
            for part in _SPLIT.split(subject)
            if (match := _field_of(part.strip(), names))
        }
        for name in sorted(placed):
            out.by_field.setdefault(name, []).append(problem)
        if not placed:
            out.general.append(problem)
    return out


def _field_of(subject: str, names: Mapping[str, str]) -> str | None:
    """The longest known field that ``subject`` is or starts (``compile.metrics[0]``)."""
    best = None
    for name in names:
        if subject == name or subject.startswith((name + ".", name + "[")):
            if best is None or len(name) > len(best):
                best = name
    return best


def number(text: str | None) -> Any:
    """A typed number: int, float, None when empty, else the text itself (register names it)."""
    text = (text or "").strip()
    if not text:
        return None
    if _INT.match(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def _text(form: MultiDict, name: str) -> str | None:
    value = (form.get(name) or "").strip()
    return value or None


def _compact(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


# -- one builder per form: (form, files) -> event data ------------------------------------------
MODEL_FIELDS = ("name", "description", "version", "keras_json", "keras_file", "compile")
MODEL_ALIASES = {"keras_b64": "keras_file", "compile.optimizer": "optimizer"} | {
    f"compile.{k}": k for k in ("loss", "metrics")
}


def model_event(form: MultiDict, files: Mapping[str, FileStorage]) -> dict[str, Any]:
    """``kml.model.register``: the uploaded ``.keras`` file (Base64) or the pasted Keras JSON."""
    upload = files.get("keras_file")
    raw = upload.read() if upload is not None and upload.filename else b""
    optimizer = _text(form, "optimizer")
    if optimizer and optimizer.startswith("{"):
        try:
            optimizer = json.loads(optimizer)
        except ValueError:
            pass  # sent as typed: register says what is wrong with it
    spec = _compact(
        {
            "optimizer": optimizer,
            "loss": _text(form, "loss"),
            "metrics": [m for m in _LIST.split(form.get("metrics") or "") if m] or None,
        }
    )
    return _compact(
        {
            "name": _text(form, "name") or "",
            "description": form.get("description") or None,
            "version": number(form.get("version")),
            "keras_json": _text(form, "keras_json"),
            "keras_b64": base64.b64encode(raw).decode() if raw else None,
            "compile": spec or None,
        }
    )


CONFIGURATION_FIELDS = ("name", "description", "models")


def configuration_event(form: MultiDict) -> dict[str, Any]:
    return {
        "name": _text(form, "name") or "",
        "description": form.get("description") or "",
        "models": [m for m in form.getlist("models") if m],
    }


DEPLOYMENT_FIELDS = (
    "id",
    "description",
    "configuration",
    "models",
    "batch_size",
    "epochs",
    "shuffle",
    "seed",
    "learning_rate",
)


def deployment_event(form: MultiDict) -> dict[str, Any]:
    models = [m for m in form.getlist("models") if m]
    return _compact(
        {
            "id": _text(form, "id"),
            "description": form.get("description") or None,
            "configuration": _text(form, "configuration"),
            "models": models or None,
            "batch_size": number(form.get("batch_size")),
            "epochs": number(form.get("epochs")),
            "shuffle": form.get("shuffle") == "on",
            "seed": number(form.get("seed")),
            "learning_rate": number(form.get("learning_rate")),
        }
    )


INFERENCE_FIELDS = (
    "id",
    "run_id",
    "model",
    "input_topic",
    "output_topic",
    "min_scale",
    "max_scale",
    "target_concurrency",
)


def inference_event(form: MultiDict) -> dict[str, Any]:
    return _compact(
        {
            "id": _text(form, "id"),
            "run_id": _text(form, "run_id") or "",
            "model": _text(form, "model"),
            "input_topic": _text(form, "input_topic") or "",
            "output_topic": _text(form, "output_topic") or "",
            "min_scale": number(form.get("min_scale")),
            "max_scale": number(form.get("max_scale")),
            "target_concurrency": number(form.get("target_concurrency")),
        }
    )
