"""The whole pipeline, walked in a real browser on the real stack: upload a model, group it,
deploy it, publish data with the sink, watch the run's curves grow to the last epoch, open the
confusion matrix, download the model, deploy it for inference, watch predictions arrive, and
train another deployment on the same stream. Screenshots of the main pages go to
docs/screenshots/."""

from __future__ import annotations

import time

import numpy as np
import pytest
from playwright.sync_api import Error as PlaywrightError

from functions.dashboard.register import RegisterAPI
from kafkaml.kafka import ConfirmingProducer, ensure_topic
from kafkaml.sink import RawSink
from kml.dev.inference import start_local_inference
from tests.functions.dashboard.conftest import screenshot

pytestmark = pytest.mark.integration

EPOCHS = 40
COPIES = 3
"""Every digit three times (5,391 records): enough steps that the run lasts several of the
page's 700 ms polls even on a fast machine, so its curve is seen growing."""
BATCH_SIZE = 8
PREDICTED = 120


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x, y = data.images.astype(np.uint8), data.target.astype(np.uint8)
    return np.concatenate([x] * COPIES), np.concatenate([y] * COPIES)


def register_model(page, name: str, keras_file) -> None:
    page.goto("/models")
    page.fill("#f-name", name)
    page.fill("#f-description", "8x8 digits")
    page.set_input_files("#f-keras_file", str(keras_file))
    page.fill("#f-optimizer", "adam")
    page.fill("#f-loss", "sparse_categorical_crossentropy")
    page.fill("#f-metrics", "accuracy")
    page.click("text=Register model")
    page.wait_for_url(f"**/models/{name}/1", timeout=240_000)  # register validates in Keras


def create_deployment(page, epochs: int, configuration: str = "", model: str = "") -> str:
    page.goto("/deployments")
    if configuration:
        page.select_option("#f-configuration", configuration)
    if model:
        page.check(f"input[name=models][value='{model}']")
    page.fill("#f-epochs", str(epochs))
    page.fill("#f-batch_size", str(BATCH_SIZE))
    page.fill("#f-seed", "7")
    page.fill("#f-learning_rate", "0.01")
    page.click("text=Create deployment")
    page.wait_for_url("**/deployments/*")
    return page.url.rsplit("/", 1)[1]


def watch_curve(page, timeout_s: float = 420.0) -> list[int]:
    """Epochs drawn in the loss chart, read every 100 ms until the page shows final metrics."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            points, done = page.evaluate(
                """() => {
                    const f = document.querySelector('figure.chart[data-metric="loss"]');
                    const done = !!document.querySelector('table.metrics');
                    return [f ? Number(f.dataset.points) : 0, done];
                }"""
            )
        except PlaywrightError:  # the page reloads once the run has ended
            time.sleep(0.1)
            continue
        seen.append(points)
        if done and points:
            return seen
        time.sleep(0.1)
    raise AssertionError(f"the run did not end within {timeout_s:.0f}s; epochs seen {seen[-5:]}")


def test_the_pipeline_in_the_browser(page, pipeline, digits_keras, unique):
    settings = pipeline.settings
    model, configuration = f"digits-{unique}", f"cfg-{unique}"

    register_model(page, model, digits_keras)
    assert page.locator(".facts").inner_text().count("[null, 8, 8]") == 1  # input shape
    page.goto("/models")
    assert page.locator(f"tr:has(a:text-is('{model}'))").inner_text().count("[null, 10]") == 1

    page.goto("/configurations")
    page.fill("#f-name", configuration)
    page.check(f"input[name=models][value='{model}']")
    page.click("text=Create configuration")
    page.wait_for_url("**/configurations")
    assert f"{model}@1" in page.locator(f"tr:has-text('{configuration}')").inner_text()

    deployment = create_deployment(page, EPOCHS, configuration=configuration)
    x, y = digits()
    sink = RawSink(
        settings.kafka_bootstrap,
        f"digits-{unique}",
        deployment_id=deployment,
        validation_rate=0.2,
        test_rate=0.2,
        control_topic=settings.control_topic,
        description="dashboard test",
    )
    sink.send_batch(x, y)
    control = sink.close()
    run_id = control.run_id()

    # The run page, opened before training starts: its curve grows epoch by epoch.
    page.goto(f"/runs/{run_id}")
    seen = watch_curve(page)
    assert seen[-1] == EPOCHS  # the stored history once it succeeded
    growing = sorted({n for n in seen if 0 < n < EPOCHS})
    assert len(growing) >= 2, f"no live growth seen: {sorted(set(seen))}"
    assert page.locator("#run-status .status").inner_text() == "succeeded"
    assert f"epoch {EPOCHS} of {EPOCHS}" in page.inner_text("#run-progress")
    validation = page.locator('figure.chart[data-metric="loss"] table.values tbody tr').count()
    assert validation == EPOCHS

    metrics = page.locator("table.metrics").inner_text()
    assert "accuracy" in metrics and "Test" in metrics and "Validation" in metrics
    page.click("summary:has-text('Confusion matrix')")
    matrix = page.locator("table.cm")
    assert matrix.is_visible()
    cells = [int(t) for t in matrix.locator("tbody td").all_inner_texts()]
    splits = RegisterAPI.from_settings(settings).get("runs", run_id)["splits"]
    assert len(cells) == 100 and sum(cells) == splits["test"] > 0
    diagonal = [int(t) for t in matrix.locator("tbody td.diag").all_inner_texts()]
    assert sum(diagonal) > sum(cells) / 2, "a trained model gets most test digits right"
    screenshot(page, "run")

    download = page.request.get(page.get_attribute("a:text-is('model.keras')", "href"))
    assert download.ok and download.body()[:2] == b"PK"  # a zip: the .keras file from MinIO
    assert page.locator("a:text-is('model.tflite')").count() == 1

    # Inference from the run, then predictions arriving on its output topic.
    page.click("text=Deploy this run for inference")
    page.wait_for_url("**/inference?run_id=*")
    assert page.input_value("#f-run_id") == run_id
    inference_id = f"dash-{unique}"
    page.fill("#f-input_topic", f"in-{unique}")
    page.fill("#f-output_topic", f"out-{unique}")
    page.fill("#f-id", inference_id)
    page.fill("#f-max_scale", "2")
    page.click("text=Create inference deployment")
    page.wait_for_url(f"**/inference/{inference_id}")
    page.click("summary:has-text('Knative Service')")
    manifests = page.inner_text("#manifests pre")
    assert "kind: KafkaSource" in manifests and f"in-{unique}" in manifests

    ensure_topic(settings.kafka_bootstrap, f"in-{unique}")
    ensure_topic(settings.kafka_bootstrap, f"out-{unique}")
    start_local_inference(settings, inference_id)  # what `kml deploy inference --local` does
    producer = ConfirmingProducer(settings.kafka_bootstrap)
    for image in x[:PREDICTED]:
        producer.produce(f"in-{unique}", image.tobytes(), None)
    producer.flush()
    page.wait_for_function(
        f"() => Number(document.querySelector('#predictions').dataset.total) >= {PREDICTED}",
        timeout=240_000,
    )
    counts = [int(c) for c in page.get_attribute("#predictions", "data-counts").split(",")]
    assert len(counts) == 10 and sum(counts) == PREDICTED
    assert sum(1 for c in counts if c) >= 5, f"a trained classifier predicts many digits: {counts}"
    drawn_to = page.evaluate("document.querySelector('#predictions').plot.scales.y.max")
    assert drawn_to >= max(counts)  # the tallest bar fits the chart
    assert f"{PREDICTED} predictions" in page.inner_text("#predictions-summary")
    assert page.locator("#recent-predictions tbody tr").count() == 10
    page.click("summary:has-text('Knative Service')")  # closed again: the page fits a screen
    screenshot(page, "inference")

    # The same stream for another deployment (data stream reuse).
    second = create_deployment(page, 2, model=model)
    page.goto("/datasources")
    page.click(f"a:text-is('{control.stream_id()}')")
    page.fill("#f-deployment_id", "no-such-deployment")
    page.click("text=Train on this stream")
    assert page.locator(".field:has(#f-deployment_id) .problem").all_inner_texts() == [
        "deployment_id: no deployment 'no-such-deployment'"
    ]
    page.fill("#f-deployment_id", second)
    page.click("text=Train on this stream")
    page.wait_for_url("**/runs/run-*")
    reused = page.url.rsplit("/", 1)[1]
    assert reused == control.with_deployment(second).run_id()
    page.wait_for_selector("table.metrics", timeout=300_000)
    assert page.locator("#run-status .status").inner_text() == "succeeded"
    assert control.stream_id() in page.locator(".facts").inner_text()  # the same datasource
    page.goto("/")
    screenshot(page, "overview")
