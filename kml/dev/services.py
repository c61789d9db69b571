"""The local stack's own parts: the register and train functions (gunicorn), the KafkaSource
bridge, the dashboard (gunicorn), and the local inference processes that ``kml deploy inference
--local`` started."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from kafkaml.settings import Settings
from kml.dev.bridge import read_status
from kml.dev.procs import Proc, gunicorn_argv, readiness_status, require_free
from kml.dev.s3_users import function_settings

REPO = Path(__file__).resolve().parents[2]
STATUS_FRESH_S = 10.0


def child_env(settings: Settings, function: str | None = None) -> dict[str, str]:
    """``KML_*`` for a child process, with the state directory made absolute and, for a
    function, its own S3 key (``kml.dev.s3_users``) in place of the root one."""
    if function is not None:
        settings = function_settings(settings, function)
    return settings.replace(state_dir=str(Path(settings.state_dir).resolve())).to_env()


class GunicornFunction:
    """One function's Flask app served by gunicorn on loopback."""

    def __init__(
        self, settings: Settings, function: str, port: int, start_timeout_s: float = 180.0
    ) -> None:
        self.settings = settings
        self.name = function
        self.port = port
        self.start_timeout_s = start_timeout_s
        self.proc = Proc(function, Path(settings.state_dir) / function)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return gunicorn_argv(self.name, self.port)

    def start(self) -> None:
        if self.proc.pid() is not None and self.healthy():
            return
        self.proc.stop()
        require_free(self.port, f"{self.name}_port", f"the {self.name} function")
        self.proc.start(self.argv(), env=child_env(self.settings, self.name), cwd=REPO)
        self.proc.wait_until(
            self.healthy,
            f"the {self.name} function at {self.address} to be ready",
            self.start_timeout_s,
        )

    def healthy(self) -> bool:
        return readiness_status(self.address) == 200

    def stop(self) -> bool:
        return self.proc.stop(timeout=20)


class BridgeProcess:
    """``python -m kml.dev.bridge``; healthy while its status file is fresh."""

    name = "bridge"

    def __init__(self, settings: Settings, start_timeout_s: float = 60.0) -> None:
        self.settings = settings
        self.start_timeout_s = start_timeout_s
        self.proc = Proc("bridge", Path(settings.state_dir) / "bridge")

    @property
    def address(self) -> str:
        return f"kafka {self.settings.kafka_bootstrap} -> functions"

    def start(self) -> None:
        if self.proc.pid() is not None and self.healthy():
            return
        self.proc.stop()
        (Path(self.settings.state_dir) / "bridge" / "status.json").unlink(missing_ok=True)
        self.proc.start(
            [sys.executable, "-m", "kml.dev.bridge"],
            env=child_env(self.settings.replace(s3_access_key="", s3_secret_key="")),  # no S3
            cwd=REPO,
        )
        self.proc.wait_until(
            self.healthy, "the KafkaSource bridge to run its sources", self.start_timeout_s
        )

    def healthy(self) -> bool:
        pid = self.proc.pid()
        status = read_status(self.settings.state_dir)
        if pid is None or status is None or status.get("pid") != pid:
            return False
        fresh = time.time() - float(status.get("ts", 0)) < STATUS_FRESH_S
        return fresh and all(s.get("alive") for s in status.get("sources", []))

    def stop(self) -> bool:
        return self.proc.stop(timeout=20)


class LocalInference:
    """The inference processes under ``<state_dir>/infer-*/``: not started here (``kml deploy
    inference ID --local`` does that), but checked by ``status`` and stopped by ``down``."""

    name = "inference"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proc = Proc("inference", Path(settings.state_dir) / "inference")

    def running(self) -> dict[str, Proc]:
        found = {}
        for home in sorted(Path(self.settings.state_dir).glob("infer-*")):
            proc = Proc("infer", home)
            if proc.pid() is not None:
                found[home.name.removeprefix("infer-")] = proc
        return found

    @property
    def address(self) -> str:
        return f"{len(self.running())} local inference process(es)"

    def start(self) -> None:
        """Nothing to start: inference deployments are started one by one on request."""

    def healthy(self) -> bool:
        for home in Path(self.settings.state_dir).glob("infer-*"):
            url_file = home / "url"
            if Proc("infer", home).pid() is not None and url_file.is_file():
                if readiness_status(url_file.read_text().strip()) != 200:
                    return False
        return True

    def stop(self) -> bool:
        running = self.running()
        for inference_id, proc in running.items():
            try:
                from kml.dev.inference import stop_local_inference
            except ImportError:
                proc.stop()
            else:
                stop_local_inference(self.settings, inference_id)
        return bool(running)


def local_services(settings: Settings) -> list:
    """The register and train functions, the bridge, the dashboard and local inference, in
    start order."""
    return [
        GunicornFunction(settings, "register", settings.register_port),
        GunicornFunction(settings, "train", settings.train_port),
        BridgeProcess(settings),
        GunicornFunction(settings, "dashboard", settings.dashboard_port),
        LocalInference(settings),
    ]
