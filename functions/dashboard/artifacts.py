"""What the pages read of a run's artifacts and an inference deployment's manifests.

Register's read API gives a run's artifact *keys* (``models.<m>.artifacts``); the files live
in the object store. The dashboard presigns a download of a key the run record names (never a
key from the request), and reads the three small JSON/YAML files it renders: the stored
``history.json`` and ``metrics.json`` of a model, and the manifests register rendered for an
inference deployment. Nothing is copied or stored again.
"""

from __future__ import annotations

import threading
from typing import Any

from kafkaml.errors import NotFound
from kafkaml.parsing import loads
from kafkaml.settings import Settings

DOWNLOAD_EXPIRES_S = 900
"""Lifetime of a presigned download link (seconds)."""


class Artifacts:
    """Read-only access to the stored files behind run and inference records."""

    def __init__(self, settings: Settings, store: Any = None) -> None:
        self._settings = settings
        self._store = store
        self._lock = threading.Lock()

    @property
    def store(self) -> Any:
        with self._lock:
            if self._store is None:  # boto3 loads on first use, not at start
                from storage.objects import ObjectStore

                self._store = ObjectStore.from_settings(self._settings)
            return self._store

    def download_url(self, run: dict[str, Any], model: str, filename: str) -> str:
        """A presigned GET of one artifact the run record names; ``NotFound`` otherwise."""
        return self.store.presigned_get(artifact_key(run, model, filename), DOWNLOAD_EXPIRES_S)

    def json_of(self, run: dict[str, Any], model: str, filename: str) -> Any | None:
        """A JSON artifact's content, None when the run has no such artifact (yet)."""
        try:
            return loads(self.store.get(artifact_key(run, model, filename)).body)
        except NotFound:
            return None

    def manifests(self, inference: dict[str, Any]) -> str | None:
        """The YAML register rendered and stored for an inference deployment."""
        try:
            return self.store.get(f"inference/{inference['id']}.yaml").body.decode()
        except NotFound:
            return None


def artifact_key(run: dict[str, Any], model: str, filename: str) -> str:
    """The key of ``filename`` of ``model`` in the run record; ``NotFound`` if it names none."""
    trained = (run.get("models") or {}).get(model) or {}
    key = (trained.get("artifacts") or {}).get(filename)
    if not key:
        raise NotFound(
            f"run {run.get('run_id')} has no artifact {filename} for model {model}",
            run_id=run.get("run_id"),
        )
    return key
