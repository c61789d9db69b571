"""The function images, started as they would run: each image's own command inside the image
(``buildah run``, host network), against the session's real Kafka broker and MinIO."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from kafkaml.settings import Settings
from kml.dev.images import FUNCTIONS, Buildah, image_name
from kml.dev.procs import free_port, log_tail

HOST_ONLY = ("KML_STATE_DIR", "KML_CACHE_DIR", "KML_MODEL_CACHE_DIR", "KML_AUTH_TOKENS_FILE")
"""Paths of this machine: inside an image the function uses its own defaults (its user's home)."""
TOKENS_AT = "/run/kml/tokens.json"
"""Where a container sees the hashed tokens table (as the Secret ``kml-tokens`` is mounted)."""


@pytest.fixture(scope="session")
def buildah() -> Buildah:
    """The storage `make images` builds into; every image must be there (no test without it)."""
    buildah = Buildah.from_settings(Settings.from_env())
    missing = [image_name(f) for f in FUNCTIONS if not buildah.has_image(image_name(f))]
    if missing:
        pytest.fail(f"not built: {', '.join(missing)}; run `make images` first")
    return buildah


@dataclass
class Container:
    """One working container of a function image, its entrypoint running in the background."""

    buildah: Buildah
    function: str
    name: str
    log: Path
    url: str = ""
    proc: subprocess.Popen | None = None

    def exec(self, *argv: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run a command inside the container (as the image's user), not the entrypoint."""
        return subprocess.run(
            self.buildah.argv(
                "run", "--isolation", "chroot", "--network", "host", self.name, "--", *argv
            ),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def probe(self, *argv: str, attempts: int = 3) -> subprocess.CompletedProcess:
        """``exec`` of a command that must print: once in a while (seen on a loaded machine)
        ``buildah run`` exits 0 with the output lost, so an empty answer is asked again."""
        for _ in range(attempts):
            done = self.exec(*argv)
            if done.returncode != 0 or done.stdout.strip():
                return done
        pytest.fail(f"{' '.join(argv[:2])} printed nothing in {self.function} {attempts} times")

    def start(self, settings: Settings, timeout_s: float = 300.0) -> str:
        """The image's own Cmd with the function's ``KML_*`` environment; waits for readiness."""
        config = self.buildah.image_config(image_name(self.function))
        command = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
        env = {k: v for k, v in settings.to_env().items() if k not in HOST_ONLY}
        port = free_port()
        env["PORT"] = str(port)
        flags = [arg for k, v in env.items() for arg in ("-e", f"{k}={v}")]
        if settings.auth_tokens_file:  # a copy readable by the image's user, as a Secret volume
            table = self.log.with_name("tokens.json")
            shutil.copyfile(settings.auth_tokens_file, table)
            table.chmod(0o644)
            flags += ["-v", f"{table}:{TOKENS_AT}:ro"]
            flags += ["-e", f"KML_AUTH_TOKENS_FILE={TOKENS_AT}"]
        argv = self.buildah.argv(
            "run", "--isolation", "chroot", "--network", "host", *flags, self.name, "--", *command
        )
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.function} exited {self.proc.returncode}:\n{log_tail(self.log)}")
            try:
                if requests.get(f"{self.url}/health/readiness", timeout=2).status_code == 200:
                    return self.url
            except requests.RequestException:  # not listening yet, or busy importing
                pass
            time.sleep(0.3)
        pytest.fail(f"{self.function} not ready in {timeout_s:.0f}s:\n{log_tail(self.log)}")

    def stop(self) -> None:
        """SIGTERM the entrypoint's process group (SIGKILL after 30 s); remove the container."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        subprocess.run(self.buildah.argv("rm", self.name), capture_output=True)


@pytest.fixture(scope="module")
def container(buildah, tmp_path_factory):
    """The module's one working container per function image (made on first use); all are
    stopped and removed at the end of the module."""
    made: dict[str, Container] = {}

    def get(function: str) -> Container:
        if function not in made:
            name = f"kml-test-{function}-{uuid.uuid4().hex[:6]}"
            buildah("from", "--pull=never", "--name", name, image_name(function))
            log = tmp_path_factory.mktemp(f"image-{function}") / "container.log"
            made[function] = Container(buildah, function, name, log)
        return made[function]

    yield get
    for c in made.values():
        c.stop()
