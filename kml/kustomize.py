"""``kustomize build`` in Python, for the subset ``knative/`` uses (no kubectl needed).

Supported kustomization fields: ``resources`` (YAML files and directories holding a
kustomization), ``patches`` (JSON 6902 lists or strategic-merge documents, inline or from a
file, with an optional ``target``), ``namespace`` and ``labels`` (metadata labels only, no
selectors or templates). Any other field is an error, so a manifest never silently loses a
transformation this module does not know. Transformers run in kustomize's order: patches,
then namespace, then labels.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "patches", "namespace", "labels"}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "APIService",
}
# Lists of core kinds that strategic merge merges by key instead of replacing.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "envFrom": None,
}


class KustomizeError(ValueError):
    """The kustomization cannot be built; the message names the file and the problem."""


@dataclass(frozen=True)
class Target:
    group: str | None = None
    version: str | None = None
    kind: str | None = None
    name: str | None = None
    namespace: str | None = None

    def matches(self, doc: dict[str, Any]) -> bool:
        group, _, version = _split_api_version(doc.get("apiVersion", ""))
        meta = doc.get("metadata") or {}
        checks = [
            (self.group, group),
            (self.version, version),
            (self.kind, doc.get("kind")),
            (self.namespace, meta.get("namespace")),
        ]
        if any(want is not None and want != got for want, got in checks):
            return False
        return self.name is None or re.fullmatch(self.name, meta.get("name", "")) is not None


def build(path: str | Path) -> list[dict[str, Any]]:
    """The resources of the kustomization in ``path``, transformed, in declaration order."""
    root = Path(path)
    kfile = _kustomization_file(root)
    try:
        spec = yaml.safe_load(kfile.read_text()) or {}
    except yaml.YAMLError as e:
        raise KustomizeError(f"{kfile}: not valid YAML: {e}") from None
    unknown = sorted(set(spec) - SUPPORTED_FIELDS)
    if unknown:
        raise KustomizeError(
            f"{kfile}: unsupported field(s) {unknown}; supported: {sorted(SUPPORTED_FIELDS)}"
        )
    docs: list[dict[str, Any]] = []
    for entry in spec.get("resources") or []:
        docs.extend(_load_resource(root / entry, kfile))
    _check_unique(docs, kfile)
    for i, patch in enumerate(spec.get("patches") or []):
        _apply_patch(docs, patch, root, f"{kfile} patches[{i}]")
    if spec.get("namespace"):
        for doc in docs:
            if doc.get("kind") not in CLUSTER_SCOPED:
                doc.setdefault("metadata", {})["namespace"] = spec["namespace"]
    for i, entry in enumerate(spec.get("labels") or []):
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise KustomizeError(f"{kfile} labels[{i}]: only metadata labels are supported")
        for doc in docs:
            labels = doc.setdefault("metadata", {}).setdefault("labels", {})
            labels.update({k: str(v) for k, v in (entry.get("pairs") or {}).items()})
    return docs


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of one file."""
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if d]
    except yaml.YAMLError as e:
        raise KustomizeError(f"{path}: not valid YAML: {e}") from None


def resource_id(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{doc.get('apiVersion')}/{doc.get('kind')}/{ns + '/' if ns else ''}{meta.get('name')}"


def _kustomization_file(root: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        if (root / name).is_file():
            return root / name
    raise KustomizeError(f"{root}: no kustomization.yaml")


def _load_resource(path: Path, kfile: Path) -> list[dict[str, Any]]:
    if path.is_dir():
        return build(path)
    if not path.is_file():
        raise KustomizeError(f"{kfile}: resource {path} does not exist")
    return load_documents(path)


def _check_unique(docs: list[dict[str, Any]], kfile: Path) -> None:
    seen: set[str] = set()
    for doc in docs:
        rid = resource_id(doc)
        if rid in seen:
            raise KustomizeError(f"{kfile}: resource {rid} is declared twice")
        seen.add(rid)


def _split_api_version(api_version: str) -> tuple[str, str, str]:
    if "/" in api_version:
        group, version = api_version.split("/", 1)
        return group, "/", version
    return "", "", api_version


def _apply_patch(docs: list[dict[str, Any]], patch: dict[str, Any], root: Path, where: str) -> None:
    if "path" in patch:
        text = (root / patch["path"]).read_text()
    elif "patch" in patch:
        text = patch["patch"]
    else:
        raise KustomizeError(f"{where}: needs `patch` or `path`")
    try:
        body = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise KustomizeError(f"{where}: not valid YAML: {e}") from None
    if isinstance(body, list):
        if "target" not in patch:
            raise KustomizeError(f"{where}: a JSON 6902 patch needs a target")
        target = Target(**patch["target"])
        hits = [d for d in docs if target.matches(d)]
        if not hits:
            raise KustomizeError(f"{where}: target {patch['target']} matches no resource")
        for doc in hits:
            _json6902(doc, body, where)
        return
    if not isinstance(body, dict):
        raise KustomizeError(f"{where}: a patch is a JSON 6902 list or a YAML object")
    target = Target(**patch["target"]) if "target" in patch else _smp_target(body)
    hits = [d for d in docs if target.matches(d)]
    if not hits:
        raise KustomizeError(f"{where}: strategic merge patch matches no resource")
    for doc in hits:
        merged = _strategic_merge(doc, body)
        doc.clear()
        doc.update(merged)


def _smp_target(body: dict[str, Any]) -> Target:
    group, _, version = _split_api_version(body.get("apiVersion", ""))
    meta = body.get("metadata") or {}
    return Target(
        group=group,
        version=version,
        kind=body.get("kind"),
        name=re.escape(meta.get("name", "")),
        namespace=meta.get("namespace"),
    )


def _strategic_merge(base: Any, patch: Any, key: str | None = None) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = _strategic_merge(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    merge_key = MERGE_KEYS.get(key or "")
    if isinstance(base, list) and isinstance(patch, list) and merge_key:
        out = list(base)
        for item in patch:
            idx = next(
                (
                    i
                    for i, b in enumerate(out)
                    if isinstance(b, dict)
                    and isinstance(item, dict)
                    and b.get(merge_key) == item.get(merge_key)
                ),
                None,
            )
            if idx is None:
                out.append(copy.deepcopy(item))
            else:
                out[idx] = _strategic_merge(out[idx], item)
        return out
    return copy.deepcopy(patch)


def _pointer(path: str, where: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"{where}: path {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json6902(doc: dict[str, Any], ops: list[dict[str, Any]], where: str) -> None:
    for op in ops:
        parts = _pointer(op.get("path", ""), where)
        parent: Any = doc
        for part in parts[:-1]:
            try:
                parent = parent[int(part)] if isinstance(parent, list) else parent[part]
            except (KeyError, IndexError, ValueError):
                raise KustomizeError(
                    f"{where}: path {op['path']} does not exist in {resource_id(doc)}"
                ) from None
        last = parts[-1]
        kind = op.get("op")
        if kind in ("add", "replace"):
            value = copy.deepcopy(op.get("value"))
            if isinstance(parent, list):
                if last == "-":
                    parent.append(value)
                elif kind == "add":
                    parent.insert(int(last), value)
                else:
                    parent[int(last)] = value
            else:
                if kind == "replace" and last not in parent:
                    raise KustomizeError(
                        f"{where}: cannot replace missing {op['path']} in {resource_id(doc)}"
                    )
                parent[last] = value
        elif kind == "remove":
            try:
                del parent[int(last) if isinstance(parent, list) else last]
            except (KeyError, IndexError):
                raise KustomizeError(f"{where}: cannot remove missing {op['path']}") from None
        else:
            raise KustomizeError(f"{where}: JSON 6902 op {kind!r} is not supported")
