"""Read a ``.keras`` archive within bounds, and check its HDF5 weights, before Keras opens it.

A ``.keras`` file is a zip of ``config.json``, ``metadata.json`` and ``model.weights.h5``. A zip
member's header says how large it is, but a small archive can expand to gigabytes (a zip bomb)
and a header can lie. So every member's declared size is checked against its cap first, and
then it is read through a bounded reader that stops one byte past the cap whatever the header
said (Python's zip reader also stops at the declared size and checks the CRC, so a member that
expands past its header fails as unreadable). The weights file is opened with h5py and walked
without reading data: links to other files or paths, datasets stored outside the file (external
storage, virtual datasets) and datasets whose declared shape exceeds the cap are refused.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from typing import Any

from kafkaml.errors import ValidationFailed

CONFIG = "config.json"
METADATA = "metadata.json"
WEIGHTS = "model.weights.h5"
MEMBERS = (CONFIG, METADATA, WEIGHTS)
"""The only members accepted: what ``model.save("m.keras")`` writes for built-in layers."""
_JSON_MEMBERS = (CONFIG, METADATA)


@dataclass(frozen=True)
class Limits:
    """Caps on a ``.keras`` archive; ``setting`` names the knob each comes from."""

    member_max_bytes: int = 64 * 1024 * 1024
    config_max_bytes: int = 8 * 1024 * 1024

    def cap(self, name: str) -> tuple[int, str]:
        if name in _JSON_MEMBERS:
            return self.config_max_bytes, "KML_REGISTER_KERAS_CONFIG_MAX_BYTES"
        return self.member_max_bytes, "KML_REGISTER_KERAS_MEMBER_MAX_BYTES"

    def to_dict(self) -> dict[str, int]:
        return {
            "member_max_bytes": self.member_max_bytes,
            "config_max_bytes": self.config_max_bytes,
        }


def _refuse(problem: str) -> ValidationFailed:
    return ValidationFailed("keras_b64 refused", [problem])


def _too_large(name: str, size: int, limits: Limits, verb: str) -> ValidationFailed:
    cap, setting = limits.cap(name)
    return _refuse(
        f"keras_b64.{name}: {verb} {size} bytes, more than the {cap}-byte cap ({setting})"
    )


def read_members(raw: bytes, limits: Limits) -> dict[str, bytes]:
    """The archive's members by name, each read within its cap; 422 naming the member if not."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except (zipfile.BadZipFile, ValueError) as e:
        raise _refuse(f"keras_b64: not a readable zip archive ({e})") from None
    with archive:
        infos = archive.infolist()
        seen: set[str] = set()
        for info in infos:  # every header first: nothing is decompressed before all pass
            name = info.filename
            if name not in MEMBERS:
                raise _refuse(
                    f"keras_b64: member {name[:200]!r} refused: a .keras archive of built-in "
                    f"layers holds only {', '.join(MEMBERS)}"
                )
            if name in seen:
                raise _refuse(f"keras_b64: member {name} appears more than once")
            seen.add(name)
            if info.flag_bits & 0x1:
                raise _refuse(f"keras_b64.{name}: encrypted members are refused")
            if info.file_size > limits.cap(name)[0]:
                raise _too_large(name, info.file_size, limits, "declares")
        if CONFIG not in seen:
            raise _refuse("keras_b64: config.json missing")
        return {info.filename: _read_bounded(archive, info, limits) for info in infos}


def _read_bounded(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: Limits) -> bytes:
    cap = limits.cap(info.filename)[0]
    chunks, total = [], 0
    try:
        with archive.open(info) as member:
            while chunk := member.read(min(1 << 20, cap + 1 - total)):
                chunks.append(chunk)
                total += len(chunk)
                if total > cap:
                    raise _too_large(info.filename, total, limits, "expands past")
    except (zipfile.BadZipFile, NotImplementedError, EOFError, OSError, ValueError) as e:
        raise _refuse(f"keras_b64.{info.filename}: unreadable ({e})") from None
    return b"".join(chunks)


def parse_json_member(name: str, data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        detail = str(e)[:200] if isinstance(e, ValueError) else "nested too deeply"
        raise _refuse(f"keras_b64.{name}: not JSON ({detail})") from None


def check_weights(data: bytes, limits: Limits) -> None:
    """Refuse HDF5 weights that reach outside the file or declare more data than the cap."""
    import h5py  # a TensorFlow/Keras dependency; imported only where weights are checked

    problems: list[str] = []
    budget = [limits.member_max_bytes]
    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            _walk(h5py, f, "", problems, budget)
    except (OSError, ValueError, KeyError, TypeError) as e:
        problems.append(f"keras_b64.{WEIGHTS}: not a readable HDF5 file ({str(e)[:200]})")
    if problems:
        raise ValidationFailed("model weights refused", problems[:20])


def _walk(h5py: Any, group: Any, path: str, problems: list[str], budget: list[int]) -> None:
    for key in group:
        where = f"{path}/{key}"
        label = f"keras_b64.{WEIGHTS}:{where}"
        link = group.get(key, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            problems.append(f"{label}: external link to {link.filename!r} refused")
            continue
        if isinstance(link, h5py.SoftLink):
            problems.append(f"{label}: soft link to {link.path!r} refused")
            continue
        item = group.get(key)
        if isinstance(item, h5py.Group):
            _walk(h5py, item, where, problems, budget)
        elif isinstance(item, h5py.Dataset):
            problem = _check_dataset(item, budget)
            if problem:
                problems.append(f"{label}: {problem}")
        else:
            problems.append(f"{label}: {type(item).__name__} objects refused")


def _check_dataset(dataset: Any, budget: list[int]) -> str | None:
    if dataset.id.get_create_plist().get_external_count() > 0 or dataset.external:
        return "dataset with external storage (data in another file) refused"
    if dataset.is_virtual:
        return "virtual dataset (data in other files) refused"
    if dataset.dtype.kind not in "biuf":
        return f"dataset of dtype {dataset.dtype} refused: weights are numbers"
    size = dataset.dtype.itemsize
    for n in dataset.shape or ():
        size *= int(n)
    budget[0] -= size
    if budget[0] < 0:
        return (
            f"declares shape {tuple(dataset.shape)}: the weights together exceed the "
            "KML_REGISTER_KERAS_MEMBER_MAX_BYTES cap"
        )
    return None
