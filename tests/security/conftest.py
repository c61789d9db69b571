"""Security test fixtures: attack artifacts built in a Keras child, the register app, and a look
at the validator's child processes through /proc (what a person would see with ``ps``)."""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from functions.register.app import create_app
from kafkaml.settings import Settings
from storage.registry import Registry
from tests.functions.register.conftest import COMPILE, Sender
from tests.security import attacks

__all__ = ["COMPILE", "ProcessView"]


@pytest.fixture(scope="session")
def attack_child():
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(int).result(timeout=60)  # start it now, so its pid is known
        yield pool


@pytest.fixture(scope="session")
def build(attack_child):
    """Run an ``attacks`` function by name in the Keras child."""
    return lambda name, *args: attack_child.submit(getattr(attacks, name), *args).result(
        timeout=300
    )


@pytest.fixture(scope="session")
def registry(stack) -> Registry:
    reg = Registry.from_settings(stack)
    reg.ensure_ready()
    return reg


@pytest.fixture(scope="session")
def app_settings(stack) -> Settings:
    return stack.replace(max_body_bytes=4 * 1024 * 1024)


@pytest.fixture
def send(app_settings, registry) -> Sender:
    return Sender(create_app(app_settings, registry).test_client())


@pytest.fixture
def procs(attack_child) -> ProcessView:
    """The python processes this test process started, less the test's own helpers."""
    return ProcessView(exclude=set(attack_child._processes))


class ProcessView:
    """Children of this process read from /proc: the validator's children and nothing else."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude
        self.python = os.path.realpath(sys.executable)

    def children(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in self.exclude:
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
                exe = os.path.realpath(entry / "exe")
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == os.getpid() and exe == self.python and b"resource_tracker" not in cmdline:
                found.append(int(entry.name))
        return found

    @staticmethod
    def alive(pid: int) -> bool:
        """Running or stopped (a zombie, dead but not reaped, counts as alive too)."""
        return Path(f"/proc/{pid}").exists()

    @staticmethod
    def environ(pid: int) -> dict[str, str]:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
        return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
