"""What every group of registry records shares: the object store, conditional creates, reads.

``storage.registry.Registry`` is made of these groups (``storage.runs``, ``storage.delivered``
and its own models, configurations, deployments, datasources and inference specs).
"""

from __future__ import annotations

from typing import Any

from kafkaml.errors import Conflict, NotFound
from storage.objects import ObjectStore, PreconditionFailed
from storage.records import check_schema_version


class StoreBacked:
    """Records kept as JSON objects in one bucket of ``store``."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    @property
    def store(self) -> ObjectStore:
        return self._store

    def _create(self, key: str, record: dict[str, Any], what: str) -> None:
        try:
            self._store.put_json(key, record, if_none_match=True)
        except PreconditionFailed:
            raise Conflict(f"{what} already exists", key=key) from None

    def _read(self, key: str, missing: str | None = None) -> dict[str, Any]:
        try:
            value, _ = self._store.get_json(key)
        except NotFound:
            raise NotFound(missing or f"no record {key!r}", key=key) from None
        return check_schema_version(key, value)

    def _read_all(self, prefix: str) -> list[dict[str, Any]]:
        return [record for _, record in self._read_named(prefix)]

    def _read_named(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        """(name, record) of each ``<prefix><name>.json`` right under ``prefix``."""
        out = []
        for key in self._store.list(prefix):
            name = key[len(prefix) :]
            if name.endswith(".json") and "/" not in name:
                try:
                    out.append((name[: -len(".json")], self._read(key)))
                except NotFound:
                    continue
        return out
