"""``kml dev up | down | status``: the local stack's parts, started and stopped in order."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kafkaml.settings import Settings
from kml.dev.kafka_broker import KafkaBroker
from kml.dev.minio_server import MinioServer
from kml.dev.procs import Proc


class Part(Protocol):
    name: str
    proc: Proc

    @property
    def address(self) -> str: ...

    def start(self) -> None: ...

    def healthy(self) -> bool: ...

    def stop(self) -> bool: ...


@dataclass(frozen=True)
class PartStatus:
    name: str
    address: str
    pid: int | None
    healthy: bool


def isolated_settings(state_dir: str, bucket: str = "kml", **overrides) -> Settings:
    """Settings for a private stack on free ports (tests, benchmarks), whatever else runs here,
    with its own tokens (``kml.dev.access``)."""
    import os

    from kml.dev.procs import free_port

    kafka, minio = free_port(), free_port()
    values = dict(
        state_dir=state_dir,
        kafka_port=kafka,
        kafka_controller_port=free_port(),
        minio_port=minio,
        minio_console_port=free_port(),
        kafka_bootstrap=f"127.0.0.1:{kafka}",
        s3_endpoint=f"http://127.0.0.1:{minio}",
        bucket=bucket,
        register_port=free_port(),
        train_port=free_port(),
        dashboard_port=free_port(),
        infer_port=free_port(),
    )
    values.update(overrides)
    cache = {k: v for k, v in os.environ.items() if k == "KML_CACHE_DIR"}
    from kml.dev.access import provision

    return provision(Settings.from_env(cache, **values))


def infrastructure(settings: Settings) -> list[Part]:
    """Kafka and MinIO: what every other part needs."""
    return [KafkaBroker(settings), MinioServer(settings)]


class Stack:
    """The parts of the local stack, in start order; stop goes in reverse."""

    def __init__(self, settings: Settings, parts: list[Part] | None = None) -> None:
        self.settings = settings
        self.parts = parts if parts is not None else default_parts(settings)
        self.home = Path(settings.state_dir)

    def up(self, on_started=lambda part: None) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / ".gitignore").write_text("*\n")
        saved = self.home / "settings.json"
        saved.write_text(json.dumps(_public(self.settings), indent=1))
        for part in self.parts:
            part.start()
            on_started(part)

    def down(self, purge: bool = False) -> list[str]:
        stopped = [p.name for p in reversed(self.parts) if p.stop()]
        if purge and self.home.exists():
            shutil.rmtree(self.home)
        return stopped

    def status(self) -> list[PartStatus]:
        return [PartStatus(p.name, p.address, p.proc.pid(), p.healthy()) for p in self.parts]


def default_parts(settings: Settings) -> list[Part]:
    parts = infrastructure(settings)
    if settings.local_parts == "infrastructure":
        return parts
    try:
        from kml.dev.services import local_services
    except ImportError:
        return parts
    return parts + local_services(settings)


def saved_settings(state_dir: str) -> dict[str, str]:
    """The settings a running stack was started with (secrets left out), for ``status``/``down``."""
    try:
        return json.loads((Path(state_dir) / "settings.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _public(settings: Settings) -> dict:
    from dataclasses import asdict

    values = asdict(settings)
    values.pop("s3_secret_key", None)
    values.pop("kafka_password", None)
    values.pop("auth_token", None)  # it stays in <state_dir>/auth/admin.token, private
    return values
