"""The Containerfiles agree with what `make images` stages and with how the local stack serves
each function: a path copied but not staged fails a build late, and a command that drifts from
the local one serves the cluster differently from every test here."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from kml.dev import inference, procs
from kml.dev.images import CONTAINERFILES, EXTRAS, FUNCTIONS, context_paths

STAGED_ONLY_BY_THE_BUILD = {"dashboard": ("dashboard-assets",)}
"""Context folders the build stages from the cache, not from the repository."""


def containerfile(function: str) -> str:
    return (CONTAINERFILES / f"{function}.Containerfile").read_text()


def gunicorn_command(function: str) -> list[str]:
    [cmd] = re.findall(r"^CMD (\[.*\])$", containerfile(function), re.M)
    shell = json.loads(cmd)
    assert shell[:2] == ["sh", "-c"] and shell[2].startswith("exec gunicorn ")
    return shlex.split(shell[2])[1:]


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize("function", FUNCTIONS)
def test_the_image_serves_the_function_as_the_local_stack_does(function):
    image = gunicorn_command(function)
    local = (
        inference.gunicorn_argv(8080) if function == "infer" else procs.gunicorn_argv(function, 1)
    )
    assert image[-1] == local[-1] == f"functions.{function}.app:create_app()"
    assert flag(image, "-b") == "0.0.0.0:${PORT:-8080}"  # Knative's PORT, all interfaces
    for name in ("--worker-class", "--timeout"):
        assert flag(image, name) == flag(local, name), name
    assert int(flag(image, "--timeout")) > 600  # above Knative's request cap


@pytest.mark.parametrize("function", FUNCTIONS)
def test_the_image_copies_only_what_the_build_stages(function):
    text = containerfile(function)
    copied = [src for line in re.findall(r"^COPY (.+)$", text, re.M) for src in line.split()[:-1]]
    staged = (*context_paths(function), *STAGED_ONLY_BY_THE_BUILD.get(function, ()))
    assert set(copied) <= set(staged), set(copied) - set(staged)
    assert f"functions/{function}" in copied and "kml" not in copied


@pytest.mark.parametrize("function", FUNCTIONS)
def test_the_dependencies_step_installs_the_extra_the_build_caches(function):
    text = containerfile(function)
    deps = re.findall(r"^RUN sh /tmp/deps/install.sh deps (\S+)$", text, re.M)
    app = re.findall(r"^RUN sh /tmp/src/install.sh app (\S+) (.+)$", text, re.M)
    assert deps == [EXTRAS[function]]
    assert [extra for extra, _ in app] == [EXTRAS[function]]
    [(_, refused)] = app
    assert {"kml", "typer"} <= set(refused.split())  # no image carries the CLI
    assert text.index("install.sh deps") < text.index("COPY kafkaml")  # deps survive code changes
    assert re.search(r"^USER 10001$", text, re.M)
