"""Forms -> register event data, and register's problems placed next to the fields they name."""

from __future__ import annotations

import base64
import io

from werkzeug.datastructures import FileStorage, MultiDict

from functions.dashboard import forms


def test_each_problem_lands_next_to_every_field_its_prefix_names():
    errors = forms.place_problems(
        "model definition",
        [
            "name: 'bad name' must be letters, digits, '.', '_', '-'",
            "keras_json / keras_b64: exactly one is required",
            "compile.loss: required",
            "compile.metrics[0]: unknown metric 'acc2'",
            "keras_json.config.layers[1]: Lambda layer refused",
            "surprise: a field the form does not have",
            "no field prefix at all",
        ],
        forms.MODEL_FIELDS,
        forms.MODEL_ALIASES,
    )
    assert errors.of("name") == ["name: 'bad name' must be letters, digits, '.', '_', '-'"]
    assert errors.of("keras_json") == [
        "keras_json / keras_b64: exactly one is required",
        "keras_json.config.layers[1]: Lambda layer refused",
    ]
    assert errors.of("keras_file") == ["keras_json / keras_b64: exactly one is required"]
    assert errors.of("loss") == ["compile.loss: required"]
    assert errors.of("metrics") == ["compile.metrics[0]: unknown metric 'acc2'"]
    assert errors.general == ["surprise: a field the form does not have", "no field prefix at all"]
    assert bool(errors) and not bool(forms.FormErrors())


def test_alternatives_with_or_are_placed_on_both_fields():
    errors = forms.place_problems(
        "deployment", ["configuration or models: one is required"], forms.DEPLOYMENT_FIELDS
    )
    assert (
        errors.of("configuration")
        == errors.of("models")
        == ["configuration or models: one is required"]
    )


def test_numbers_are_typed_and_anything_else_is_sent_as_typed():
    assert forms.number("32") == 32
    assert forms.number(" -3 ") == -3
    assert forms.number("0.01") == 0.01
    assert forms.number("") is None
    assert forms.number("ten") == "ten"  # register says what is wrong with it


def test_model_event_carries_the_upload_as_base64_and_the_compile_spec():
    upload = FileStorage(io.BytesIO(b"PK\x03\x04keras"), filename="m.keras")
    data = forms.model_event(
        MultiDict(
            {
                "name": "digits",
                "version": "",
                "optimizer": "adam",
                "loss": "sparse_categorical_crossentropy",
                "metrics": "accuracy, mae",
            }
        ),
        {"keras_file": upload},
    )
    assert data == {
        "name": "digits",
        "keras_b64": base64.b64encode(b"PK\x03\x04keras").decode(),
        "compile": {
            "optimizer": "adam",
            "loss": "sparse_categorical_crossentropy",
            "metrics": ["accuracy", "mae"],
        },
    }


def test_model_event_without_compile_fields_leaves_compile_out():
    data = forms.model_event(MultiDict({"name": "m", "keras_json": '{"a": 1}'}), {})
    assert data == {"name": "m", "keras_json": '{"a": 1}'}


def test_deployment_event_sends_what_was_typed():
    form = MultiDict(
        [
            ("configuration", ""),
            ("models", "a"),
            ("models", "b@2"),
            ("epochs", "abc"),
            ("batch_size", "16"),
            ("seed", ""),
        ]
    )
    assert forms.deployment_event(form) == {
        "models": ["a", "b@2"],
        "epochs": "abc",
        "batch_size": 16,
        "shuffle": False,
    }
