"""The shared function shape: dispatch on the CloudEvent type, JSON errors, probes, stop."""

from __future__ import annotations

import pytest

from kafkaml.errors import Conflict, Unavailable
from kafkaml.events import Event, new_event, to_http
from kafkaml.settings import Settings
from kafkaml.web import Function, function_app, function_of, json_response
from tests.access import SESSION_AUTH


class Parts:
    """A function with two event types, a switchable readiness and a close that counts."""

    def __init__(self) -> None:
        self.ready_problem: str | None = None
        self.closed = 0

    def ready(self) -> None:
        if self.ready_problem:
            raise Unavailable(self.ready_problem)

    def close(self) -> None:
        self.closed += 1

    def build(self, settings: Settings) -> Function:
        def echo(event: Event):
            return json_response({"type": event.type, "data": event.json()})

        def busy(event: Event):
            raise Conflict("run r1 is running; retry later", run_id="r1")

        return Function(
            name="demo",
            events={"demo.echo": echo, "demo.busy": busy},
            ready=self.ready,
            close=self.close,
        )


@pytest.fixture
def parts() -> Parts:
    return Parts()


@pytest.fixture
def app(parts):
    return function_app(Settings(max_body_bytes=1024, **SESSION_AUTH), parts.build)


def post(client, type_: str, data):
    headers, body = to_http(new_event(type_, "/tests", data))
    return client.post("/", headers=headers, data=body)


def test_events_are_dispatched_on_their_type_and_errors_keep_their_status(app):
    client = app.test_client()
    assert post(client, "demo.echo", {"a": 1}).get_json() == {"type": "demo.echo", "data": {"a": 1}}
    busy = post(client, "demo.busy", {})
    assert busy.status_code == 409
    assert busy.get_json() == {
        "error": "run r1 is running; retry later",
        "kind": "conflict",
        "status": 409,
        "run_id": "r1",
    }


def test_an_unknown_type_is_one_400_naming_every_accepted_type(app):
    r = post(app.test_client(), "demo.other", {})
    assert r.status_code == 400
    assert r.get_json() == {
        "error": "the demo function takes demo.echo, demo.busy events, not 'demo.other'",
        "kind": "invalid_event",
        "status": 400,
        "ce_type": "demo.other",
        "accepted": ["demo.echo", "demo.busy"],
    }


def test_a_body_over_the_limit_is_413(app):
    r = post(app.test_client(), "demo.echo", {"x": "y" * 2000})
    assert r.status_code == 413 and r.get_json()["kind"] == "payload_too_large"


def test_probes_follow_the_real_check_and_stop_closes_once(app, parts):
    client = app.test_client()
    assert client.get("/health/readiness").get_json() == {"status": "ready"}
    parts.ready_problem = "storage at memory:// does not answer"
    r = client.get("/health/readiness")
    assert r.status_code == 503 and "does not answer" in r.get_json()["error"]
    assert client.get("/health/liveness").status_code == 200
    function_of(app).stop()
    function_of(app).stop()
    assert parts.closed == 1
    assert client.get("/health/liveness").status_code == 503
    assert "stopping" in client.get("/health/readiness").get_json()["error"]


def test_a_close_that_fails_still_stops(parts):
    def broken() -> None:
        raise Unavailable("Kafka at 127.0.0.1:1 unreachable")

    app = function_app(Settings(), lambda s: Function("demo", {}, ready=parts.ready, close=broken))
    function_of(app).stop()
    assert function_of(app).stopped
    assert app.test_client().get("/health/liveness").status_code == 503
