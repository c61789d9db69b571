"""A MinIO server on loopback, built from its Go module; the bucket and the functions' users
(``kml.dev.s3_users``) are created at start."""

from __future__ import annotations

from pathlib import Path
from urllib.request import urlopen

from kafkaml.settings import Settings
from kml.dev import tools
from kml.dev.procs import Proc, require_free


class MinioServer:
    name = "minio"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = Path(settings.state_dir) / "minio"
        self.proc = Proc("minio", self.home)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.settings.minio_port}"

    def start(self, timeout: float = 60.0) -> None:
        if self.proc.pid() is None:
            binary = tools.minio_binary(Path(self.settings.cache_dir))
            require_free(self.settings.minio_port, "minio_port", "MinIO")
            require_free(
                self.settings.minio_console_port, "minio_console_port", "the MinIO console"
            )
            data = self.home / "data"
            data.mkdir(parents=True, exist_ok=True)
            self.proc.start(
                [
                    str(binary),
                    "server",
                    str(data.resolve()),
                    "--quiet",
                    "--address",
                    f"127.0.0.1:{self.settings.minio_port}",
                    "--console-address",
                    f"127.0.0.1:{self.settings.minio_console_port}",
                ],
                env={
                    "MINIO_ROOT_USER": self.settings.s3_access_key,
                    "MINIO_ROOT_PASSWORD": self.settings.s3_secret_key,
                    "MINIO_BROWSER": "on",
                    "MINIO_UPDATE": "off",
                },
            )
            self.proc.wait_until(self.healthy, f"MinIO to answer at {self.address}", timeout)
        self.ensure_bucket()
        from kml.dev.s3_users import provision

        provision(self.settings)

    def healthy(self) -> bool:
        try:
            with urlopen(f"{self.address}/minio/health/live", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def ensure_bucket(self) -> None:
        from storage.objects import ObjectStore

        ObjectStore.from_settings(self.settings).ensure_bucket()

    def stop(self) -> bool:
        return self.proc.stop(timeout=20)
