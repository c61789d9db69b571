"""Dashboard fixtures: register, train, the bridge and the dashboard as real gunicorn processes
on the session's Kafka and MinIO, and Debian's headless Chromium driven by Playwright."""

from __future__ import annotations

import multiprocessing
import os
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from kafkaml.settings import Settings
from kml.dev.procs import free_port
from kml.dev.services import BridgeProcess, GunicornFunction, LocalInference
from tests.functions.dashboard import keras_worker

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOTS = Path(__file__).resolve().parents[3] / "docs" / "screenshots"


@dataclass(frozen=True)
class Pipeline:
    settings: Settings

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.dashboard_port}"


@pytest.fixture(scope="session")
def pipeline(stack, tmp_path_factory) -> Pipeline:
    """register, train, the KafkaSource bridge and the dashboard, started as ``kml dev up``
    does, with this session's own results and dead-letter topics."""
    unique = uuid.uuid4().hex[:8]
    home = tmp_path_factory.mktemp("dashboard-stack")
    settings = stack.replace(
        state_dir=str(home / "state"),
        register_port=free_port(),
        train_port=free_port(),
        dashboard_port=free_port(),
        infer_port=free_port(),
        results_topic=f"results-{unique}",
        dlq_topic=f"dlq-{unique}",
        model_cache_dir=str(home / "models"),
    )
    parts = [
        GunicornFunction(settings, "register", settings.register_port),
        GunicornFunction(settings, "train", settings.train_port),
        BridgeProcess(settings),
        GunicornFunction(settings, "dashboard", settings.dashboard_port),
        LocalInference(settings),
    ]
    try:
        with pytest.MonkeyPatch.context() as env:
            # No ticker in the bridge: a stream's windows are the ticks its test sends (as the
            # PingSource would), not also whatever a minute's tick finds meanwhile.
            env.setenv("KML_STREAM_TICK_S", "0")
            for part in parts:
                part.start()
        yield Pipeline(settings)
    finally:
        for part in reversed(parts):
            part.stop()


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium (Playwright cannot download its own here), headless."""
    if not Path(CHROMIUM).is_file():
        message = f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run installs it)"
        (pytest.fail if os.environ.get("CI") else pytest.skip)(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, pipeline):
    """A fresh browser tab on the dashboard, laptop-sized."""
    context = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=pipeline.url)
    context.set_default_timeout(30_000)
    tab = context.new_page()
    # Signed in as a person is: the stack owner's token through /login, kept as a cookie.
    landed = tab.goto(f"/login?token={pipeline.settings.auth_token}&next=/health/readiness")
    # A refused sign-in fails here, saying why, not later as a timeout on a page's field: every
    # page would redirect to /login.
    assert landed is not None and landed.ok and tab.url.endswith("/health/readiness"), (
        f"sign-in failed: {tab.url} answered {landed and landed.status}: {tab.content()[:300]}"
    )
    try:
        yield tab
    finally:
        context.close()


@pytest.fixture(scope="session")
def digits_keras(tmp_path_factory) -> Path:
    """The ``.keras`` file a user would upload, built in a spawned child."""
    path = tmp_path_factory.mktemp("upload") / "digits.keras"
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        child.submit(keras_worker.digits_keras_file, str(path)).result(timeout=300)
    return path


def screenshot(page, name: str) -> Path:
    """The page as a user sees it, kept under docs/screenshots/ for the README."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    from PIL import Image  # 256 colours keep a page's PNG small enough for the repository

    with Image.open(path) as shot:
        small = shot.convert("RGB").quantize(colors=256)
    small.save(path, optimize=True)
    return path
