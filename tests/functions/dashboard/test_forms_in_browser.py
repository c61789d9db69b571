"""Every form refuses bad input with register's own messages, each next to the field it names."""

from __future__ import annotations

import pytest

from functions.dashboard.register import RegisterAPI
from kafkaml import events
from kafkaml.errors import ValidationFailed

pytestmark = pytest.mark.integration


def register_problems(pipeline, type_: str, data: dict) -> list[str]:
    """What register itself answers to the event a form sends for this input."""
    with pytest.raises(ValidationFailed) as refused:
        RegisterAPI.from_settings(pipeline.settings).send(type_, data)
    return refused.value.problems


def shown_next_to(page, field: str) -> list[str]:
    return page.locator(
        f".field:has(#f-{field}) .problem, fieldset#f-{field} .problem"
    ).all_text_contents()


def test_model_form_shows_registers_problems_next_to_name_source_and_compile(page, pipeline):
    page.goto("/models")
    page.fill("#f-name", "bad name!")
    page.fill("#f-keras_json", '{"class_name": "Sequential"}')
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.click("text=Register model")
    assert answer.value.status == 422
    problems = register_problems(
        pipeline,
        events.MODEL_REGISTER,
        {"name": "bad name!", "keras_json": '{"class_name": "Sequential"}'},
    )
    by_prefix = {p.split(":", 1)[0]: p for p in problems}
    assert set(by_prefix) == {"name", "compile"}
    assert shown_next_to(page, "name") == [by_prefix["name"]]
    assert (
        by_prefix["compile"] in page.locator("fieldset:has(#f-loss) > .problem").all_text_contents()
    )
    assert page.get_attribute("#f-name", "aria-invalid") == "true"
    assert page.input_value("#f-keras_json") == '{"class_name": "Sequential"}'  # kept as typed

    page.fill("#f-name", "two-sources")
    page.set_input_files(
        "#f-keras_file",
        files=[{"name": "m.keras", "mimeType": "application/octet-stream", "buffer": b"PK"}],
    )
    page.fill("#f-loss", "mse")
    page.click("text=Register model")
    (both,) = [
        p
        for p in register_problems(
            pipeline,
            events.MODEL_REGISTER,
            {
                "name": "two-sources",
                "keras_json": "{}",
                "keras_b64": "UEs=",
                "compile": {"loss": "mse"},
            },
        )
        if p.startswith("keras_json / keras_b64")
    ]
    assert shown_next_to(page, "keras_json") == [both]
    assert shown_next_to(page, "keras_file") == [both]


def test_deployment_form_names_every_bad_field(page, pipeline):
    page.goto("/deployments")
    page.fill("#f-epochs", "ten")
    page.fill("#f-batch_size", "0")
    page.fill("#f-learning_rate", "-1")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.click("text=Create deployment")
    assert answer.value.status == 422
    problems = register_problems(
        pipeline,
        events.DEPLOYMENT_CREATE,
        {"epochs": "ten", "batch_size": 0, "learning_rate": -1, "shuffle": True},
    )
    fields = {p.split(":", 1)[0] for p in problems}
    assert {"epochs", "batch_size", "learning_rate"} <= fields
    for field in ("epochs", "batch_size", "learning_rate"):
        expected = [p for p in problems if p.startswith(field + ":")]
        assert shown_next_to(page, field) == expected, field
    assert page.input_value("#f-epochs") == "ten"
    everything = page.locator(".problem").all_text_contents()
    assert all(p in everything for p in problems)  # none is lost, placed or not


def test_inference_form_and_the_keyboard(page, pipeline):
    page.goto("/inference")
    page.fill("#f-input_topic", "has space")
    page.fill("#f-max_scale", "-2")
    page.focus("#f-output_topic")
    page.keyboard.press("Enter")  # submits from the keyboard, as a form does
    page.wait_for_selector("#refused")
    assert page.evaluate("document.activeElement.id") == "refused"  # focus on the answer
    problems = register_problems(
        pipeline,
        events.INFERENCE_CREATE,
        {"run_id": "", "input_topic": "has space", "output_topic": "", "max_scale": -2},
    )
    for field in ("run_id", "input_topic", "output_topic", "max_scale"):
        expected = [p for p in problems if p.split(":", 1)[0].split(" ")[0] == field]
        assert expected, (field, problems)
        assert shown_next_to(page, field) == expected, field
