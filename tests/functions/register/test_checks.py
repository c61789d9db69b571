"""Pure checks (no Keras, no storage): config scanning and event field validation."""

from __future__ import annotations

import pytest

from functions.register.models import parse_keras_json, scan_config
from functions.register.schemas import check_deployment, check_inference, check_model
from kafkaml.errors import ValidationFailed


def _layer(cls: str, module: str = "keras.layers", **config) -> dict:
    return {"module": module, "class_name": cls, "config": config, "registered_name": None}


def test_scan_finds_nested_lambda_and_custom_objects_with_their_path():
    config = {
        "module": "keras",
        "class_name": "Sequential",
        "config": {
            "layers": [
                _layer(
                    "Dense",
                    activation={
                        "module": "builtins",
                        "class_name": "function",
                        "config": "relu",
                        "registered_name": "function",
                    },
                ),
                _layer("Lambda", function={"class_name": "__lambda__", "config": {"code": "AAAA"}}),
                _layer("MyDense", module="evil.layers"),
                _layer(
                    "Dense",
                    kernel_initializer={
                        "module": None,
                        "class_name": "Glorot",
                        "registered_name": "Custom>Glorot",
                    },
                ),
            ]
        },
    }
    problems = scan_config(config)
    assert problems[0].startswith("keras_json.config.layers[1]: Lambda layer refused")
    assert any(
        p.startswith("keras_json.config.layers[1].config.function: __lambda__") for p in problems
    )
    assert any("layers[2]: custom object evil.layers.MyDense" in p for p in problems)
    assert any(
        "layers[3].config.kernel_initializer: custom registered object" in p for p in problems
    )
    assert not any("layers[0]" in p for p in problems), "built-in activations are fine"


def test_keras_json_must_be_a_config_object():
    with pytest.raises(ValidationFailed):
        parse_keras_json("[1, 2]")
    with pytest.raises(ValidationFailed):
        parse_keras_json("{nope")
    assert parse_keras_json({"class_name": "Sequential"})[1] == {"class_name": "Sequential"}


def test_model_needs_exactly_one_definition_and_a_loss():
    assert check_model({"name": "m", "keras_json": "{}", "compile": {"loss": "mse"}}) == []
    both = check_model(
        {"name": "m", "keras_json": "{}", "keras_b64": "AA==", "compile": {"loss": "mse"}}
    )
    assert both == ["keras_json / keras_b64: exactly one is required"]
    assert "compile: required" in check_model({"name": "m", "keras_json": "{}"})[0]
    assert check_model({"name": "m", "keras_b64": "AA=="}) == []  # the file may carry it


def test_deployment_accepts_kafka_ml_style_integer_id_and_whitelisted_kwargs():
    ok = {
        "id": 7,
        "models": ["m"],
        "fit_kwargs": {"class_weight": {"0": 1.0, "1": 2}},
        "evaluate_kwargs": {"steps": 2},
    }
    assert check_deployment(ok) == []
    bad = check_deployment(
        {
            "configuration": "c",
            "models": ["m"],
            "fit_kwargs": {"class_weight": {"a": "b"}, "callbacks": []},
        }
    )
    assert [p.split(":")[0] for p in bad] == [
        "configuration / models",
        "fit_kwargs.class_weight",
        "fit_kwargs.callbacks",
    ]


def test_inference_defaults_are_valid_and_bounds_are_checked():
    assert check_inference({"run_id": "r", "input_topic": "a", "output_topic": "b"}) == []
    problems = check_inference(
        {
            "run_id": "r",
            "input_topic": "a",
            "output_topic": "b",
            "max_scale": 0,
            "target_concurrency": 5000,
            "id": "x" * 41,
        }
    )
    assert [p.split(":")[0] for p in problems] == ["id", "max_scale", "target_concurrency"]
