"""The four function images, built by `make images`, each started with its own command inside
the image against the real Kafka broker and MinIO: register stores a model and a deployment,
train runs a tiny training from a control message, infer serves that run's model over HTTP,
the dashboard shows them through the register image.

Marker ``images``: deselected by default; `make test-images` builds the images and runs these.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import requests

from kafkaml.events import (
    DEPLOYMENT_CREATE,
    DEPLOYMENT_CREATED,
    INFERENCE_CREATE,
    INFERENCE_CREATED,
    MODEL_REGISTER,
    MODEL_REGISTERED,
    new_event,
    to_http,
)
from kafkaml.kafka import ensure_topic
from kafkaml.sink import RawSink
from kml.dev.images import FUNCTIONS, image_name
from tests.access import SESSION_AUTH, TOKEN, bearer
from tests.functions.train import worker
from tests.functions.train.conftest import consume_all, digits, kafkasource_request

pytestmark = pytest.mark.images

COMPILE = {"optimizer": "adam", "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]}
EPOCHS = 4
AUTH = bearer(TOKEN)
CANDIDATES = ("tensorflow", "ai_edge_litert", "kml", "typer", "rich", "requests")
PROBE = (
    "import importlib.util as u, os, sys; print(os.getuid(), sys.prefix, "
    "'%d.%d' % sys.version_info[:2], *[m for m in sys.argv[1:] if u.find_spec(m)])"
)
"""The image's user, venv and Python, then which of the named top-level modules it holds."""


@pytest.fixture(scope="module")
def settings(stack):
    suffix = f"img{np.random.default_rng().integers(1 << 30):x}"
    return stack.replace(
        control_topic=f"control-{suffix}", results_topic=f"results-{suffix}", namespace="kml",
        **SESSION_AUTH,
    )  # fmt: skip


@pytest.fixture(scope="module")
def model_json() -> str:
    """The digits classifier's Keras JSON, made by TensorFlow in a child process."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(worker.digits_model_json).result(timeout=300)


def send(url: str, type_: str, data: dict, timeout: float = 300.0) -> requests.Response:
    """One binary-mode CloudEvent, as KafkaSource or the CLI would POST it."""
    headers, body = to_http(new_event(type_, "/tests/images", data))
    return requests.post(f"{url}/", headers={**headers, **AUTH}, data=body, timeout=timeout)


@pytest.fixture(scope="module")
def register(container, settings) -> str:
    return container("register").start(settings)


@pytest.fixture(scope="module")
def deployment(register, model_json, settings) -> dict:
    """A model registered and a deployment of it created, both through the register image."""
    name = f"digits-{settings.control_topic[-8:]}"
    r = send(register, MODEL_REGISTER, {"name": name, "keras_json": model_json, "compile": COMPILE})
    assert r.status_code == 201, r.text
    assert r.headers["ce-type"] == MODEL_REGISTERED and r.json()["version"] == 1
    data = {"models": [name], "epochs": EPOCHS, "batch_size": 32, "seed": 7, "shuffle": True}
    r = send(register, DEPLOYMENT_CREATE, {**data, "learning_rate": 0.01})
    assert r.status_code == 201, r.text
    assert r.headers["ce-type"] == DEPLOYMENT_CREATED
    return {**r.json(), "model": name}


@pytest.fixture(scope="module")
def run(container, settings, deployment) -> dict:
    """The digits streamed with the Kafka-ML sink; its control message delivered to the train
    image as KafkaSource delivers it; the run the train image answers with."""
    url = container("train").start(settings)
    topic = settings.control_topic.replace("control-", "digits-")
    ensure_topic(settings.kafka_bootstrap, topic, partitions=2)
    x, y = digits()
    sink = RawSink(
        settings.kafka_bootstrap, topic, deployment["id"], data_type="uint8", label_type="uint8",
        data_reshape="8 8", label_reshape="1", validation_rate=0.1, test_rate=0.2,
        control_topic=settings.control_topic, description="digits for the image test",
    )  # fmt: skip
    sink.send_batch(x, y)
    sink.close()
    [record] = consume_all(settings.kafka_bootstrap, settings.control_topic)
    headers, body = kafkasource_request(record, source="kml-train", namespace=settings.namespace)
    r = requests.post(f"{url}/", headers={**headers, **AUTH}, data=body, timeout=660)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def infer(container, settings, register, run) -> tuple[str, dict]:
    """An inference of the run created through register, served by the infer image."""
    suffix = settings.control_topic[-8:]
    data = {"run_id": run["run_id"], "input_topic": f"in-{suffix}", "output_topic": f"out-{suffix}"}
    r = send(register, INFERENCE_CREATE, {**data, "max_scale": 1})
    assert r.status_code == 201, r.text
    assert r.headers["ce-type"] == INFERENCE_CREATED
    spec = r.json()
    for topic in (spec["input_topic"], spec["output_topic"]):
        ensure_topic(settings.kafka_bootstrap, topic, 1)
    return container("infer").start(settings.replace(inference_id=spec["id"])), spec


def test_each_image_size_python_user_and_what_it_leaves_out(buildah, container):
    sizes = {f: buildah.image_size(image_name(f)) for f in FUNCTIONS}
    for function, size in sizes.items():
        print(f"\nimage {image_name(function)}: {size / 1e6:.0f} MB")
    assert sizes["infer"] < sizes["train"] / 2  # no TensorFlow: a far smaller pull on cold start
    for function in FUNCTIONS:
        ctr = container(function)
        probe = ctr.probe("python", "-c", PROBE, *CANDIDATES)
        assert probe.returncode == 0, probe.stderr
        uid, prefix, version, *present = probe.stdout.split()
        assert (uid, prefix, version) == ("10001", "/opt/venv", "3.11")
        if function == "infer":
            assert present == ["ai_edge_litert"]  # no TensorFlow, no CLI stack
            assert ctr.exec("python", "-c", "import tensorflow").returncode != 0
        elif function == "dashboard":
            assert present == []  # pages only: no model runtime, no CLI stack
        else:
            assert "tensorflow" in present and not {"kml", "typer"} & set(present)
        assert ctr.exec("python", "-c", "import kml").returncode != 0


def test_register_image_stores_the_model_and_the_deployment(register, deployment):
    unsigned = requests.get(f"{register}/models/{deployment['model']}", timeout=30)
    assert unsigned.status_code == 401  # the image admits only the mounted tokens
    shown = requests.get(f"{register}/models/{deployment['model']}", headers=AUTH, timeout=30)
    assert shown.status_code == 200, shown.text
    assert shown.json()["param_count"] == 8 * 8 * 32 + 32 + 32 * 10 + 10
    stored = requests.get(
        f"{register}/deployments/{deployment['id']}", headers=AUTH, timeout=30
    ).json()
    assert (stored["epochs"], stored["batch_size"]) == (EPOCHS, 32)
    assert stored["models"] == [f"{deployment['model']}@1"]


def test_train_image_trains_the_deployment_from_a_control_message(run, deployment):
    assert run["status"] == "succeeded", run
    assert run["deployment_id"] == deployment["id"]
    assert run["splits"] == {"train": 1258, "validation": 180, "test": 359}
    [result] = run["models"].values()
    assert result["metrics"]["test"]["accuracy"] >= 0.85
    assert result["tflite_error"] is None  # infer serves the TFLite form


def test_infer_image_predicts_with_the_trained_model(infer):
    url, spec = infer
    x, y = digits()
    picks = list(range(0, len(x), 18))[:100]
    r = requests.post(
        f"{url}/v1/models/{spec['id']}:predict",
        json={"instances": [x[i].tolist() for i in picks]},
        headers=AUTH,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    predictions = np.asarray(r.json()["predictions"])
    assert predictions.shape == (len(picks), 10)
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, atol=1e-4)  # softmax rows
    accuracy = float(np.mean(predictions.argmax(axis=1) == y[picks]))
    print(f"\ninfer image: {len(picks)} predictions, accuracy {accuracy:.2f}")
    assert accuracy >= 0.85
    bad = requests.post(
        f"{url}/v1/models/{spec['id']}:predict", json={"rows": []}, headers=AUTH, timeout=30
    )
    assert bad.status_code == 400 and "instances" in bad.json()["error"]
    shown = requests.get(f"{url}/v1/models/{spec['id']}", headers=AUTH, timeout=30).json()
    assert (shown["run_id"], shown["runtime"], shown["input_shape"]) == (
        spec["run_id"],
        "litert",
        [8, 8],
    )


def test_dashboard_image_shows_the_pipeline_through_the_register_image(
    container, settings, register, deployment, run
):
    url = container("dashboard").start(settings.replace(register_url=register))
    signed = requests.get(f"{url}/models", headers=AUTH, timeout=30)
    assert signed.status_code == 200, signed.text
    assert deployment["model"] in signed.text
    page = requests.get(f"{url}/runs/{run['run_id']}", headers=AUTH, timeout=30)
    assert page.status_code == 200 and "succeeded" in page.text
    chart = requests.get(f"{url}/vendor/uPlot.iife.min.js", headers=AUTH, timeout=30)
    assert chart.status_code == 200 and "uPlot" in chart.text  # copied in, never fetched
    unsigned = requests.get(f"{url}/models", timeout=30, allow_redirects=False)
    assert unsigned.status_code in (303, 401)  # no token: the login page, never the data
