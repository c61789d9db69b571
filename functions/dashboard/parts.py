"""The parts every page handler uses, built once per app from the settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from functions.dashboard.artifacts import Artifacts
from functions.dashboard.live import LiveViews
from functions.dashboard.register import RegisterAPI
from kafkaml.settings import Settings


@dataclass
class Parts:
    settings: Settings
    register: RegisterAPI
    live: LiveViews
    artifacts: Artifacts

    @classmethod
    def from_settings(cls, settings: Settings, store: Any = None) -> Parts:
        return cls(
            settings,
            RegisterAPI.from_settings(settings),
            LiveViews(settings),
            Artifacts(settings, store),
        )


TERMINAL = ("succeeded", "failed")
"""Run statuses after which nothing changes."""


def newest_first(records: list[dict[str, Any]], key: str = "created") -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: str(r.get(key) or ""), reverse=True)


def layers_of(model: dict[str, Any]) -> list[dict[str, Any]]:
    """Class, name and the telling settings of each layer in a model's Keras JSON."""
    from kafkaml.parsing import loads

    try:
        config = loads(model.get("keras_json") or "{}")
    except ValueError:
        return []
    layers = ((config or {}).get("config") or {}).get("layers") or []
    telling = (
        "units",
        "activation",
        "filters",
        "kernel_size",
        "rate",
        "batch_shape",
        "target_shape",
    )
    out = []
    for layer in layers if isinstance(layers, list) else []:
        if not isinstance(layer, dict):
            continue
        settings = layer.get("config") or {}
        out.append(
            {
                "class_name": layer.get("class_name", "?"),
                "name": settings.get("name", ""),
                "settings": {k: settings[k] for k in telling if settings.get(k) is not None},
            }
        )
    return out
