"""An online stream in a real browser on the real stack: Kafka-ML's online control message
starts a stream, ticks train its windows, the streams list shows cursor, lag, windows and
promotions, the stream page shows each window's offsets and metrics and draws them, and the
Stop button (keyboard only) stops it through register. A screenshot goes to docs/screenshots/."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import requests
from confluent_kafka import Producer
from typer.testing import CliRunner

from functions.dashboard.register import RegisterAPI
from kafkaml import events
from kafkaml.kafka import ensure_topic
from kml.cli import app
from tests.functions.dashboard.conftest import screenshot
from tests.functions.train.online_control import send_online_control

pytestmark = pytest.mark.integration

WINDOW = 120
WINDOWS = 3


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.uint8), data.target.astype(np.uint8)


def online_deployment(api: RegisterAPI, keras_file, unique: str) -> str:
    name = f"live-digits-{unique}"
    api.send(
        events.MODEL_REGISTER,
        {
            "name": name,
            "keras_b64": base64.b64encode(keras_file.read_bytes()).decode(),
            "compile": {
                "optimizer": "adam",
                "loss": "sparse_categorical_crossentropy",
                "metrics": ["accuracy"],
            },
        },
    )
    record = api.send(
        events.DEPLOYMENT_CREATE,
        {"models": [name], "epochs": 2, "batch_size": 16, "seed": 7, "learning_rate": 0.01},
    )
    return record["id"]


def tick(settings, sid: str, n: int) -> dict:
    """One ``kml.stream.tick`` to train, as the bridge's ticker (the PingSource) sends it; sent
    again, as the PingSource's next tick would, while the stream's window is held by another
    tick (reported ``skipped: held``) or the answer is transient (5xx)."""
    headers, body = events.to_http(events.new_event(events.STREAM_TICK, "/tests/ticker", {}))
    request = urllib.request.Request(
        f"http://127.0.0.1:{settings.train_port}/",
        data=body,
        headers={**headers, "Authorization": f"Bearer {settings.auth_token}"},
        method="POST",
    )
    for _ in range(30):
        try:
            with urllib.request.urlopen(request, timeout=600) as r:
                answer = json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code < 500:
                raise AssertionError(f"tick {n}: {e.code} {e.read()[:300]!r}") from None
        else:
            mine = [s for s in answer["streams"] if s["stream_id"] == sid]
            if not mine or mine[0].get("skipped") != "held":
                return answer
        time.sleep(2)
    raise AssertionError(f"tick {n}: the window of {sid} stayed held")


def wait_for_stream(api: RegisterAPI, deployment: str, timeout_s: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        mine = [s for s in api.get("streams") if s.get("deployment_id") == deployment]
        if mine:
            return mine[0]
        time.sleep(0.5)
    raise AssertionError(f"no stream for deployment {deployment} after {timeout_s} s")


def test_a_stream_in_the_browser(page, pipeline, digits_keras, unique, monkeypatch):
    settings = pipeline.settings
    api = RegisterAPI(settings.register_address, token=settings.auth_token)
    topic = f"live-{unique}"
    ensure_topic(settings.kafka_bootstrap, topic, partitions=1)
    deployment = online_deployment(api, digits_keras, unique)
    send_online_control(  # Kafka-ML's online message, the deployment's UTF-8 id as its key
        settings,
        deployment,
        topic,
        kafka_ml_key=False,
        indefinite=True,
        monitoring_metric="val_accuracy",
        change="up",
        improvement=0.05,
        window_records=WINDOW,
    )
    stream = wait_for_stream(api, deployment)  # the bridge delivered it to train
    sid = stream["id"]

    x, y = digits()
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for i in range(WINDOW * WINDOWS + 30):  # 30 more than the windows take: lag 30
        producer.produce(topic, key=y[i].tobytes(), value=x[i].tobytes(), partition=0)
    assert producer.flush(30) == 0
    for n in range(WINDOWS):
        tick(settings, sid, n)
    trained = api.get("streams", sid)
    assert len(trained["windows"]) == WINDOWS and trained["lag"] == 30
    frozen = [w["baseline"] for w in trained["windows"]]
    assert frozen[0] is None and all(isinstance(f, float) for f in frozen[1:])

    # kml streams show links the stream.png train drew when the last window committed
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("COLUMNS", "250")
    shown = CliRunner().invoke(app, ["streams", "show", sid])
    assert shown.exit_code == 0, shown.output
    assert "stream.png (val_accuracy per window, frozen vs online" in shown.output
    [link] = [ln.strip() for ln in shown.output.splitlines() if ln.strip().startswith("http")]
    assert f"streams/{sid}/stream.png" in link
    with urllib.request.urlopen(link, timeout=30) as r:
        assert r.headers["Content-Type"] == "image/png" and r.read(8) == b"\x89PNG\r\n\x1a\n"

    page.goto("/streams")
    row = page.locator(f"tr[data-stream='{sid}']")
    cells = row.locator("td").all_inner_texts()
    assert cells[0] == "open" and cells[1] == deployment
    assert cells[3] == f"0:{WINDOW * WINDOWS}"  # the cursor
    assert cells[4:7] == ["30", str(WINDOWS), str(trained["promotions"])]

    row.locator("a").first.focus()  # keyboard only, from here on
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/streams/{sid}")
    rows = page.locator("#windows tbody tr")
    assert rows.count() == WINDOWS
    first = rows.nth(0).locator("td").all_inner_texts()
    assert first[0] == f"{topic}:0:0:{WINDOW}" and first[1] == str(WINDOW)
    assert first[5] == "promoted"  # the first window promotes
    for i, w in enumerate(trained["windows"]):
        texts = rows.nth(i).locator("td").all_inner_texts()
        assert texts[3] == f"{w['candidate']:.4f}"
        assert texts[5] == ("promoted" if w["promote"] else "kept")
    chart = page.locator("#stream-chart")
    assert chart.get_attribute("data-points") == str(WINDOWS)
    assert chart.get_attribute("data-promotions") == str(trained["promotions"])
    drawn = page.evaluate(
        "() => { const p = document.getElementById('stream-chart').plot;"
        " return [p.data[0].length, p.data[4].filter(v => v !== null).length]; }"
    )
    assert drawn == [WINDOWS, trained["promotions"]]
    assert page.locator("#stream-chart canvas").count() == 1
    screenshot(page, "stream")

    page.focus("#stop-stream")
    with page.expect_navigation():  # the POST, then register's answer redirects to the page
        page.keyboard.press("Enter")
    assert page.url.endswith(f"/streams/{sid}")
    assert page.locator("#stream-status").inner_text() == "stopped"
    assert page.locator("#stop-stream").count() == 0
    assert api.get("streams", sid)["status"] == "stopped"
    after = tick(settings, sid, WINDOWS)  # stopped: the lag is not trained
    assert sid not in json.dumps(after) and len(api.get("streams", sid)["windows"]) == WINDOWS


def test_a_read_only_session_sees_the_stream_but_cannot_stop_it(browser, pipeline, unique):
    from pathlib import Path

    from kafkaml.auth import READ, add_token
    from storage.registry import Registry

    settings = pipeline.settings
    registry = Registry.from_settings(settings)
    sid = f"stream-ro-{unique}"
    registry.create_stream(
        sid,
        {
            "deployment_id": "1",
            "topic": f"nowhere-{unique}",
            "status": "open",
            "cursor": {"0": 0},
            "metric": "val_accuracy",
            "change": "up",
            "improvement": 0.05,
            "windows": [],
            "promotions": 0,
        },
    )
    reader = add_token(Path(settings.auth_tokens_file), f"reader-{unique}", [READ])
    # The functions read the tokens file again within a second of a change: wait for that.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        probe = requests.get(
            f"{pipeline.url}/streams", headers={"Authorization": f"Bearer {reader}"}, timeout=10
        )
        if probe.status_code != 401:
            break
        time.sleep(0.2)
    assert probe.status_code == 200, probe.text[:300]
    context = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=pipeline.url)
    try:
        tab = context.new_page()
        tab.goto(f"/login?token={reader}&next=/streams/{sid}")
        assert tab.url.endswith(f"/streams/{sid}")
        assert tab.locator("#stream-status").inner_text() == "open"
        assert tab.locator("#stop-stream").count() == 0
        assert "needs a token with the write scope" in tab.content()
        assert "No window yet" in tab.content()
        refused = tab.request.post(f"/streams/{sid}/stop")  # the form's POST, sent anyway
        assert refused.status == 403 and "write" in refused.text()
        assert registry.get_stream(sid)[0]["status"] == "open"
    finally:
        context.close()
