"""Validate each model definition in a fresh child process of its own, with an empty environment.

Why a child: TensorFlow never loads into the web worker (it stays small and starts fast), and
whatever a definition does to Keras stays in a process that serves that one request and is then
gone; nothing carries over to the next registration. The child starts from an EMPTY environment
(a private temporary HOME, the Keras backend, the import path) so it never holds the S3 secret or
any other variable of the function. It runs in its own process group; past the timeout the whole
group is killed. A child that dies (OOM killer, a signal, a crash in native code) is answered
503 (retried later) and never 422 (dead-lettered): the definition was not judged. Requests and
answers cross as JSON on stdin/stdout, never pickles.

To keep the first answer quick, one spare child is started ahead (``warm_up``) and imports Keras
while it waits for its one request; it is used once, and a new spare follows.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from functions.register.models import Limits, ValidatedModel, decode_keras_file
from kafkaml.errors import KmlError, Unavailable, ValidationFailed
from kafkaml.settings import Settings

log = logging.getLogger("kml.register")

MAX_CHILDREN = 2
"""Validations running at once in one process (each child is a TensorFlow process)."""
_ROOT = str(Path(__file__).resolve().parents[2])
"""Where the project's packages are imported from, handed to the child as its only path."""
CHILD_MODULE = "functions.register.validator"
"""What a child runs (``python -m``); its command line names it, so it is easy to find."""
_PASSED = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
"""Machine quirks numpy needs to not crash on some processors; no secrets."""


@dataclass(frozen=True)
class Config:
    """The validator's knobs, taken from the settings of the app that uses it."""

    timeout_s: float = 180.0
    limits: Limits = Limits()

    @classmethod
    def from_settings(cls, settings: Settings) -> Config:
        return cls(
            timeout_s=settings.register_validate_timeout_s,
            limits=Limits(
                member_max_bytes=settings.register_keras_member_max_bytes,
                config_max_bytes=settings.register_keras_config_max_bytes,
            ),
        )


@dataclass
class _Child:
    proc: subprocess.Popen[bytes]
    home: str


_lock = threading.Lock()
_slots = threading.BoundedSemaphore(MAX_CHILDREN)
_config = Config()
_spare: _Child | None = None
_keep_spare = False


def child_environment(home: str) -> dict[str, str]:
    """Everything a validator child's environment holds: no variable of this process but two."""
    env = {
        "HOME": home,
        "TMPDIR": home,
        "KERAS_HOME": str(Path(home) / ".keras"),
        "KERAS_BACKEND": "tensorflow",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": _ROOT,
        "LANG": "C.UTF-8",
    }
    env.update({name: os.environ[name] for name in _PASSED if name in os.environ})
    return env


def _spawn(warm: bool) -> _Child:
    home = tempfile.mkdtemp(prefix="kml-validator-")
    argv = [sys.executable, "-s", "-B", "-m", CHILD_MODULE]
    proc = subprocess.Popen(
        argv + (["--warm"] if warm else []),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_environment(home),
        cwd=home,
        start_new_session=True,  # its own process group: a timeout kills all of it
        close_fds=True,
    )
    return _Child(proc, home)


def _kill(child: _Child) -> None:
    """Kill the child's whole process group, reap it, remove its home."""
    try:
        os.killpg(child.proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        child.proc.communicate(timeout=10)
    except (subprocess.TimeoutExpired, ValueError, OSError):
        child.proc.kill()
    shutil.rmtree(child.home, ignore_errors=True)


def _take_spare() -> _Child | None:
    global _spare
    with _lock:
        child, _spare = _spare, None
    if child is not None and child.proc.poll() is not None:
        _kill(child)  # died while waiting (e.g. killed): reap it, start a fresh one
        return None
    return child


def _ensure_spare() -> None:
    global _spare
    with _lock:
        if not _keep_spare or (_spare is not None and _spare.proc.poll() is None):
            return
        stale, _spare = _spare, _spawn(warm=True)
    if stale is not None:
        _kill(stale)


def warm_up(settings: Settings | None = None) -> None:
    """Take the app's settings and start the spare child, which imports Keras meanwhile."""
    global _config, _keep_spare
    with _lock:
        if settings is not None:
            _config = Config.from_settings(settings)
        _keep_spare = True
    _ensure_spare()


def shutdown() -> None:
    """Stop the spare child (validations in flight finish on their own)."""
    global _spare, _keep_spare
    with _lock:
        child, _spare, _keep_spare = _spare, None, False
    if child is not None:
        _kill(child)


def validate(data: dict[str, Any]) -> tuple[ValidatedModel, bytes | None]:
    """``models.validate_definition`` in a fresh child; the same errors, raised here."""
    config = _config
    raw = decode_keras_file(data["keras_b64"]) if data.get("keras_b64") is not None else None
    if not _slots.acquire(timeout=config.timeout_s):
        raise Unavailable("every model validator is busy; retry later")
    try:
        child = _take_spare() or _spawn(warm=False)
        request = {"data": data, "limits": config.limits.to_dict()}
        answer = _run(child, json.dumps(request).encode(), config.timeout_s)
    finally:
        _slots.release()
        _ensure_spare()
    kind = answer.get("kind")
    if kind == "invalid":
        raise ValidationFailed(str(answer.get("message")), list(answer.get("problems") or []))
    if kind == "error":
        raise KmlError(str(answer.get("message")), status=int(answer.get("status") or 500))
    return ValidatedModel(**answer["model"]), raw


def _run(child: _Child, request: bytes, timeout_s: float) -> dict[str, Any]:
    """Send the request, wait for the answer; kill the child on timeout, 503 if it died."""
    pid = child.proc.pid
    try:
        out, err = child.proc.communicate(request, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill(child)
        log.warning(
            "model validation timed out; validator killed",
            extra={"fields": {"pid": pid, "timeout_s": timeout_s}},
        )
        raise Unavailable(
            f"model validation took longer than {timeout_s:g} s; the validator was stopped",
            timeout_s=timeout_s,
        ) from None
    finally:
        shutil.rmtree(child.home, ignore_errors=True)
    code = child.proc.returncode
    try:
        answer = json.loads(out) if code == 0 and out else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        how = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        tail = err.decode("utf-8", "replace").strip().splitlines()[-3:]
        log.warning(
            "model validator died", extra={"fields": {"pid": pid, "how": how, "stderr": tail}}
        )
        raise Unavailable(f"model validation did not finish: the validator died ({how})")
    return answer


def _answer(request: dict[str, Any], warming: threading.Thread | None) -> dict[str, Any]:
    """Runs in the child: the validation's outcome as a JSON-safe value."""
    from functions.register.models import check_definition, load_definition

    limits = Limits(**request["limits"])
    try:
        checked = check_definition(request["data"], limits)  # no Keras: refusals come at once
        if warming is not None:
            warming.join()  # h5py and Keras are imported by one thread only
        validated = load_definition(checked, limits)
        return {"kind": "ok", "model": validated.summary()}
    except ValidationFailed as e:
        return {"kind": "invalid", "message": e.message, "problems": e.problems}
    except KmlError as e:
        return {"kind": "error", "message": e.message, "status": e.status}


def _import_keras() -> None:
    import keras  # noqa: F401


def _child_main(argv: list[str]) -> None:
    answer_to = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever Keras or TensorFlow print goes to stderr, never into the answer
    warming = None
    if "--warm" in argv:  # the spare imports Keras while it waits for its request
        warming = threading.Thread(target=_import_keras, name="import-keras", daemon=True)
        warming.start()
    request = sys.stdin.buffer.read()
    if request:  # empty: a retired spare, or the parent is gone
        json.dump(_answer(json.loads(request), warming), answer_to)
        answer_to.flush()
    os._exit(0)  # skip TensorFlow's teardown: the answer is out, nothing else is kept


if __name__ == "__main__":
    _child_main(sys.argv[1:])
