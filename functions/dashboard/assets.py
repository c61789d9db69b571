"""The one charting library the dashboard serves (uPlot), kept outside the repository.

``python -m functions.dashboard.assets`` fetches the pinned npm package with ``npm pack``,
checks it against the integrity hash written here, and unpacks the three files the pages use
into ``<cache_dir>/dashboard/uplot-<version>/``. The dashboard serves them from there under
``/vendor/``; it refuses to start without them, naming the command, so a page never loads
half a dashboard or reaches out to the internet for a script.
"""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from kafkaml.errors import Unavailable
from kafkaml.settings import Settings

PACKAGE = "uplot"
VERSION = "1.6.32"
INTEGRITY = (
    "sha512-"
    "KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="
)
"""The npm registry's ``dist.integrity`` of ``uplot@1.6.32`` (MIT licensed)."""
FILES = {
    "package/dist/uPlot.iife.min.js": "uPlot.iife.min.js",
    "package/dist/uPlot.min.css": "uPlot.min.css",
    "package/LICENSE": "LICENSE",
}
"""Tarball member -> file served under ``/vendor/``."""
FETCH_COMMAND = "python -m functions.dashboard.assets (make stack runs it)"


def assets_dir(settings: Settings) -> Path:
    return Path(settings.cache_dir) / "dashboard" / f"{PACKAGE}-{VERSION}"


def missing(settings: Settings) -> list[str]:
    """The served files that are not in place (empty once fetched)."""
    folder = assets_dir(settings)
    return [name for name in FILES.values() if not (folder / name).is_file()]


def require(settings: Settings) -> Path:
    """The folder of the served files; ``Unavailable`` naming the fetch command if incomplete."""
    absent = missing(settings)
    if absent:
        raise Unavailable(
            f"the dashboard's chart library is not in {assets_dir(settings)} "
            f"(missing {', '.join(absent)}); run {FETCH_COMMAND}"
        )
    return assets_dir(settings)


def check_integrity(tarball: bytes, integrity: str = INTEGRITY) -> None:
    """Raise ``ValueError`` unless ``tarball`` has the pinned sha512."""
    algorithm, _, expected = integrity.partition("-")
    digest = base64.b64encode(hashlib.new(algorithm, tarball).digest()).decode()
    if digest != expected:
        raise ValueError(f"{PACKAGE}@{VERSION}: integrity {algorithm}-{digest} != {integrity}")


def unpack(tarball: bytes, folder: Path, integrity: str = INTEGRITY) -> None:
    """Write the served files of a checked tarball into ``folder`` (nothing else is extracted)."""
    check_integrity(tarball, integrity)
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        for member, name in FILES.items():
            source = tar.extractfile(member)
            if source is None:
                raise ValueError(f"{PACKAGE}@{VERSION}: {member} is not a file")
            (folder / name).write_bytes(source.read())


def fetch(settings: Settings) -> Path:
    """``npm pack`` the pinned package (once), check it, unpack it; returns the folder."""
    folder = assets_dir(settings)
    if not missing(settings):
        return folder
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(f"npm is needed once to fetch {PACKAGE}@{VERSION}; install Node.js")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [npm, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", tmp, "--silent"],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=300,
        )
        unpack((Path(tmp) / f"{PACKAGE}-{VERSION}.tgz").read_bytes(), folder)
    return folder


if __name__ == "__main__":
    print(f"{PACKAGE}@{VERSION} in {fetch(Settings.from_env())}", file=sys.stderr)
