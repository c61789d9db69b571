"""The read pages render what register answers, including records that lack optional fields."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from functions.dashboard import assets
from functions.dashboard.app import build, shown
from kafkaml.settings import Settings
from kafkaml.web import function_app
from tests.access import SESSION_AUTH


class Register:
    """Register's read API answering from a dict, as the pages call it."""

    def __init__(self, answers: dict[str, object]) -> None:
        self.answers = answers

    def get(self, *path: str):
        return self.answers["/".join(path)]


def test_a_missing_field_is_a_dash_and_a_present_one_json():
    from jinja2 import Undefined

    assert shown(Undefined(name="input_shape")) == "&mdash;"
    assert shown(None) == "&mdash;"
    assert shown([None, 8, 8]) == "[null, 8, 8]"
    assert shown({"loss": "<mse>"}) == "{&#34;loss&#34;: &#34;&lt;mse&gt;&#34;}"  # escaped


def test_the_models_page_lists_a_model_stored_without_shapes():
    settings = Settings(**SESSION_AUTH)
    if assets.missing(settings):
        pytest.fail("the chart library is missing: python -m functions.dashboard.assets")
    register = Register(
        {
            "models": [
                {
                    "name": "full",
                    "version": 1,
                    "input_shape": [None, 8, 8],
                    "output_shape": [None, 10],
                },
                {"name": "bare", "version": 3},  # no shapes: an older or hand-written record
            ]
        }
    )
    live = SimpleNamespace(check=lambda: None, close=lambda: None)
    app = function_app(settings, lambda s: build(s, SimpleNamespace(register=register, live=live)))
    page = app.test_client().get("/models", headers={"Accept": "text/html"})
    assert page.status_code == 200, page.text[:500]
    assert "[null, 8, 8]" in page.text and "bare" in page.text
    assert "&mdash;" in page.text


def test_the_streams_page_lists_records_it_cannot_fully_read():
    settings = Settings(**SESSION_AUTH)
    register = Register(
        {
            "streams": [
                {"id": "stream-ok", "status": "open", "topic": "t", "cursor": {"0": 5}, "lag": 2},
                {"n": 2, "lag": None},  # not a stream record at all
                {"id": "stream-odd", "cursor": ["not", "a", "map"], "lag": None},
            ]
        }
    )
    live = SimpleNamespace(check=lambda: None, close=lambda: None)
    app = function_app(settings, lambda s: build(s, SimpleNamespace(register=register, live=live)))
    page = app.test_client().get("/streams", headers={"Accept": "text/html"})
    assert page.status_code == 200, page.text[:500]
    assert "stream-ok" in page.text and "0:5" in page.text and "stream-odd" in page.text


def test_an_inference_following_a_stream_before_its_first_promotion_links_the_stream():
    settings = Settings(**SESSION_AUTH)
    waiting = {"id": "inf-wait", "run_id": None, "stream": "stream-7", "model": "digits"}
    pinned = {"id": "inf-pin", "run_id": "run-3", "model": "digits"}
    register = Register({"inference": [waiting, pinned], "runs": []})
    live = SimpleNamespace(check=lambda: None, close=lambda: None)
    app = function_app(settings, lambda s: build(s, SimpleNamespace(register=register, live=live)))
    page = app.test_client().get("/inference", headers={"Accept": "text/html"})
    assert page.status_code == 200, page.text[:500]
    assert "/runs/None" not in page.text  # no link to a run that does not exist
    assert 'href="/streams/stream-7"' in page.text and 'href="/runs/run-3"' in page.text
