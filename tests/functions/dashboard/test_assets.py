"""The chart library: pinned by integrity, unpacked file by file, required at start."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile

import pytest

from functions.dashboard import assets
from functions.dashboard.app import create_app
from kafkaml.errors import Unavailable
from kafkaml.settings import Settings


def tarball(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def test_a_tarball_that_is_not_the_pinned_one_is_refused():
    with pytest.raises(ValueError, match="integrity"):
        assets.check_integrity(b"something else")
    data = b"the real one"
    assets.check_integrity(data, integrity(data))


def test_only_the_served_files_are_unpacked(tmp_path):
    data = tarball(
        {member: f"body of {name}".encode() for member, name in assets.FILES.items()}
        | {"package/../../escape.js": b"never written"}
    )
    assets.unpack(data, tmp_path / "out", integrity(data))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(assets.FILES.values())
    assert (tmp_path / "out" / "uPlot.min.css").read_bytes() == b"body of uPlot.min.css"
    assert not (tmp_path / "escape.js").exists()


def test_the_dashboard_does_not_start_without_its_chart_library(tmp_path):
    settings = Settings(cache_dir=str(tmp_path / "empty-cache"))
    assert assets.missing(settings) == list(assets.FILES.values())
    with pytest.raises(Unavailable, match="python -m functions.dashboard.assets"):
        create_app(settings)
