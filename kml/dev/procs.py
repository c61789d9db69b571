"""Start, watch and stop the local stack's processes; every wait is bounded and named."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class StackError(RuntimeError):
    """The local stack could not do what was asked; the message says what to do."""


def gunicorn_argv(
    function: str,
    port: int,
    *,
    threads: int = 8,
    workers: int = 1,
    extra: tuple[str, ...] = (),
    worker_class: str = "gthread",
) -> list[str]:
    """The command serving ``functions.<function>`` under gunicorn on loopback: threaded workers
    (or ``worker_class``, given ``threads``), a request timeout above Knative's 600 s cap."""
    return [
        sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}",
        "--worker-class", worker_class, "--threads", str(threads), "--workers", str(workers),
        "--timeout", "660", "--graceful-timeout", "10", *extra,
        f"functions.{function}.app:create_app()",
    ]  # fmt: skip


def readiness_status(url: str, timeout_s: float = 2.0) -> int:
    """The HTTP status of ``url``/health/readiness (0 when nothing answers)."""
    try:
        with urllib.request.urlopen(f"{url}/health/readiness", timeout=timeout_s) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return 0


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def port_answers(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_free(port: int, setting: str, what: str) -> None:
    if not port_is_free(port):
        raise StackError(
            f"port {port} for {what} is taken; free it or move {what} with "
            f"KML_{setting.upper()} (or --{setting.replace('_', '-')})"
        )


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text[-lines:])


@dataclass
class Proc:
    """One detached process of the stack: its PID file and its log."""

    name: str
    home: Path

    @property
    def pid_file(self) -> Path:
        return self.home / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.home / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        if _is_zombie(pid):
            return None
        return pid

    def start(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None):
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "ab")
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
        log.close()
        self.pid_file.write_text(str(proc.pid))
        return proc

    def wait_until(self, check: Callable[[], bool], what: str, timeout: float) -> None:
        """Wait for ``check``; fail with the log's tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise StackError(
                    f"{self.name} died while waiting for {what}; last lines of {self.log_file}:\n"
                    + log_tail(self.log_file)
                )
            if check():
                return
            time.sleep(0.2)
        raise StackError(
            f"timed out after {timeout:.0f}s waiting for {what}; last lines of {self.log_file}:\n"
            + log_tail(self.log_file)
        )

    def stop(self, timeout: float = 20.0) -> bool:
        """SIGTERM the process group, SIGKILL after ``timeout``; True when something was stopped."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.1)
        if self.pid() is not None:
            _signal_group(pid, signal.SIGKILL)
            time.sleep(0.2)
        self.pid_file.unlink(missing_ok=True)
        return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return True
    return False
