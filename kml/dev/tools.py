"""Fetch and build the stack's parts with the ordinary clients, cached outside the repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from kml.dev.procs import StackError

KAFKA_VERSION = "4.1.1"
MINIO_MODULE = "github.com/minio/minio"
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"

_MIN = {"java": 17, "go": (1, 24)}


def _run(argv: list[str], what: str, timeout: float, env: dict[str, str] | None = None) -> str:
    try:
        out = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired:
        raise StackError(f"{what} did not finish within {timeout:.0f}s") from None
    if out.returncode != 0:
        tail = "\n".join((out.stdout + out.stderr).splitlines()[-30:])
        raise StackError(f"{what} failed (exit {out.returncode}):\n{tail}")
    return out.stdout + out.stderr


def require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"`{name}` was not found on PATH; install {hint}")
    return path


def check_java() -> str:
    java = require_tool("java", "a Java 17+ runtime (e.g. the openjdk-17-jre-headless package)")
    text = _run([java, "-version"], "java -version", 30)
    m = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    major = int(m.group(1)) if m else 0
    if major == 1 and m and m.group(2):
        major = int(m.group(2))
    if major < _MIN["java"]:
        raise StackError(f"java {major} is too old: Kafka {KAFKA_VERSION} needs Java 17 or newer")
    return java


def check_go() -> str:
    go = require_tool("go", "Go 1.24 or newer (the golang toolchain)")
    text = _run([go, "version"], "go version", 30)
    m = re.search(r"go(\d+)\.(\d+)", text)
    if not m or (int(m.group(1)), int(m.group(2))) < _MIN["go"]:
        raise StackError(f"{text.strip()} is too old: building MinIO needs Go 1.24 or newer")
    return go


def kafka_libs(cache_dir: Path) -> Path:
    """The broker's jars, fetched once by ``mvn dependency:copy-dependencies``."""
    libs = cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = require_tool("mvn", "Apache Maven (the maven package)")
    check_java()
    pom = resources.files("kml.dev") / "kafka" / "pom.xml"
    with resources.as_file(pom) as pom_path:
        _run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom_path),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={libs}",
                "-DincludeScope=runtime",
                f"-Dkafka.version={KAFKA_VERSION}",
            ],
            f"fetching the Kafka {KAFKA_VERSION} jars with mvn",
            900,
        )
    marker.write_text(KAFKA_VERSION)
    return libs


def minio_binary(cache_dir: Path) -> Path:
    """The MinIO server, built once by ``go install`` at the pinned module version."""
    bindir = cache_dir / f"minio-{MINIO_VERSION}"
    binary = bindir / "minio"
    if binary.exists():
        return binary
    go = check_go()
    _run(
        [go, "install", f"{MINIO_MODULE}@{MINIO_VERSION}"],
        f"building MinIO {MINIO_VERSION} with go install",
        1800,
        env={"GOBIN": str(bindir), "CGO_ENABLED": "0"},
    )
    return binary


def fetch_all(cache_dir: Path) -> dict[str, Path]:
    return {"kafka": kafka_libs(cache_dir), "minio": minio_binary(cache_dir)}
