"""The event-loop server (``functions.infer.worker``) answers as the Flask app does: the same
records, keys, headers and dead letters, the same 401/403/400/503, the Flask routes through its
thread pool, and concurrent requests sharing model calls."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection

import numpy as np
import pytest

from functions.infer.app import create_app
from functions.infer.model import LITERT
from functions.infer.worker import Connection, Server, loop_factory
from kafkaml.auth import SCOPES, add_token
from kml.dev.procs import free_port
from tests.functions.infer.fakes import LinearModel, RecordingProducer, fixed_loader, settings
from tests.functions.infer.test_app import _kafka_headers, _x


class LiteRtLike(LinearModel):
    """Called on the loop itself, as a LiteRT model is."""

    runtime = LITERT


class Served:
    def __init__(
        self, model: LinearModel, producer: RecordingProducer, uvloop: bool = False, **changes
    ) -> None:
        self.model, self.producer = model, producer
        self.app = create_app(
            settings(**changes), loader=fixed_loader(model), producer_factory=lambda s: producer
        )
        assert self.app.extensions["kml.infer"].wait_ready(5)
        self.token = self.app.extensions["kml.settings"].auth_token
        self.port = free_port()
        self.loop = (loop_factory() if uvloop else None or asyncio.new_event_loop)()
        started = threading.Event()

        async def serve() -> None:
            server = Server(self.app, 8, "127.0.0.1", self.port)
            await self.loop.create_server(lambda: Connection(server), "127.0.0.1", self.port)
            started.set()

        self.thread = threading.Thread(
            target=lambda: (self.loop.run_until_complete(serve()), self.loop.run_forever()),
            daemon=True,
        )
        self.thread.start()
        assert started.wait(5)

    def request(self, method: str, path: str, body: bytes = b"", headers=None, token=True):
        connection = HTTPConnection("127.0.0.1", self.port, timeout=10)
        sent = dict(headers or {})
        if token is True:
            sent["Authorization"] = f"Bearer {self.token}"
        elif token:
            sent["Authorization"] = f"Bearer {token}"
        connection.request(method, path, body=body, headers=sent)
        r = connection.getresponse()
        data = r.read()
        connection.close()
        return r.status, dict(r.getheaders()), data

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.app.extensions["kml.infer"].close()


@pytest.fixture(
    params=[(LinearModel, False), (LiteRtLike, False), (LiteRtLike, True)],
    ids=["model-in-a-thread", "model-on-the-loop", "model-on-uvloop"],
)
def served(request):
    model, uvloop = request.param
    s = Served(model(), RecordingProducer(), uvloop=uvloop)
    yield s
    s.close()


def test_a_kafka_record_lands_as_the_flask_app_lands_it(served):
    flask = Served(LinearModel(), RecordingProducer())
    try:
        x = _x(1)
        headers = _kafka_headers(2, 41, key="img-7", kafkaheadertraceid="abc")
        lean = served.request("POST", "/", x.tobytes(), headers)
        client = flask.app.test_client()
        old = client.post("/", data=x.tobytes(), headers=headers)
    finally:
        flask.close()
    assert lean[0] == old.status_code == 200
    assert json.loads(lean[2]) == old.get_json()
    assert served.producer.sent == flask.producer.sent
    (out,) = served.producer.on("out")
    assert out["key"] == b"img-7" and out["headers"]["traceid"] == b"abc"
    values = json.loads(out["value"])["values"]
    np.testing.assert_allclose(values, served.model.expected(x)[0], rtol=1e-5)


def test_concurrent_records_share_model_calls_and_each_gets_its_own_prediction(served):
    xs = [_x(100 + i) for i in range(80)]  # fewer than the 100 prediction slots

    sockets = [socket.create_connection(("127.0.0.1", served.port), timeout=10) for _ in xs]
    try:
        for i, sock in enumerate(sockets):  # all sent before the first answer is read
            headers = {
                **_kafka_headers(0, i, key=f"k{i}"),
                "Authorization": f"Bearer {served.token}",
            }
            head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            body = xs[i].tobytes()
            sock.sendall(f"POST / HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode())
            sock.sendall(body)
        answers = [read_answer(sock) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in answers)
    by_key = {r["key"]: json.loads(r["value"])["values"] for r in served.producer.on("out")}
    assert len(by_key) == 80
    for i, x in enumerate(xs):
        np.testing.assert_allclose(by_key[f"k{i}".encode()], served.model.expected(x)[0], rtol=1e-5)
    assert sum(served.model.calls) == 80 and max(served.model.calls) > 1


def test_an_undecodable_record_is_dead_lettered_and_answered_2xx(served):
    status, _, body = served.request(
        "POST", "/", b"\x01\x02\x03", _kafka_headers(1, 5, key="bad-1")
    )
    answer = json.loads(body)
    assert status == 200 and answer["dead_lettered"] is True and "3 bytes" in answer["reason"]
    (dead,) = served.producer.on("dlq")
    assert dead["value"] == b"\x01\x02\x03" and dead["key"] == b"bad-1"
    assert served.producer.on("out") == [] and served.model.calls == []


def test_callers_without_a_token_or_the_scope_are_refused(served, tmp_path):
    x = _x(3).tobytes()
    status, headers, body = served.request("POST", "/", x, _kafka_headers(0, 1), token=None)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert served.request("POST", "/", x, _kafka_headers(0, 1), token="kml_nope")[0] == 401
    assert served.producer.sent == []


def test_a_token_without_the_deliver_scope_is_403(tmp_path):
    tokens = tmp_path / "tokens.json"
    full = add_token(tokens, "all", SCOPES)
    reader = add_token(tokens, "reader", ["read"])
    s = Served(LinearModel(), RecordingProducer(), auth_tokens_file=str(tokens), auth_token=full)
    try:
        refused = s.request("POST", "/", _x(3).tobytes(), _kafka_headers(0, 1), token=reader)
        predict = s.request(
            "POST", "/v1/models/digits-1:predict", b'{"instances": []}', token=reader
        )
        taken = s.request("POST", "/", _x(3).tobytes(), _kafka_headers(0, 2))
    finally:
        s.close()
    assert refused[0] == 403 and predict[0] == 403 and taken[0] == 200


def test_predict_answers_as_kserve_and_names_bad_bodies(served):
    x = _x(7, n=3)
    status, _, body = served.request(
        "POST", "/v1/models/digits-1:predict", json.dumps({"instances": x.tolist()}).encode()
    )
    assert status == 200
    np.testing.assert_allclose(json.loads(body)["predictions"], served.model.expected(x), rtol=1e-5)
    bad = served.request("POST", "/v1/models/digits-1:predict", b"{not json")
    assert bad[0] == 400 and "JSON" in json.loads(bad[2])["error"]
    other = served.request("POST", "/v1/models/other:predict", b'{"instances": [[1]]}')
    assert other[0] == 404


def test_kafka_down_is_a_503_and_the_probes_and_metrics_answer_through_flask(served):
    served.producer.down = True
    status, _, body = served.request("POST", "/", _x(4).tobytes(), _kafka_headers(0, 3))
    assert status == 503 and json.loads(body)["kind"] == "unavailable"
    assert served.request("GET", "/health/readiness", token=None)[0] == 200
    _, _, metrics = served.request("GET", "/metrics", token=None)
    assert 'kml_infer_requests_total{outcome="server_error",path="kafka"} 1.0' in metrics.decode()


def test_a_body_above_the_limit_is_a_413_naming_the_setting():
    s = Served(LinearModel(), RecordingProducer(), infer_max_body_bytes=1000)
    try:
        status, _, body = s.request("POST", "/", b"\0" * 2000, _kafka_headers(0, 1))
    finally:
        s.close()
    assert status == 413 and "KML_INFER_MAX_BODY_BYTES" in json.loads(body)["error"]
    assert s.producer.sent == []


def test_a_request_finding_every_slot_busy_is_a_503_at_once():
    s = Served(LinearModel(delay_s=0.5), RecordingProducer(), infer_request_slots=1)
    try:
        with ThreadPoolExecutor(2) as pool:
            slow = pool.submit(s.request, "POST", "/", _x(1).tobytes(), _kafka_headers(0, 1))
            threading.Event().wait(0.2)
            busy = s.request("POST", "/", _x(2).tobytes(), _kafka_headers(0, 2))
            first = slow.result()
    finally:
        s.close()
    assert first[0] == 200
    assert busy[0] == 503 and "slots are busy" in json.loads(busy[2])["error"]


def raw(served: Served, head: str, body: bytes = b"") -> bytes:
    """What the server answers to ``head`` (CRLF line ends added) sent as it is."""
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode("latin-1") + b"\r\n\r\n" + body)
        return read_answer(sock)


def read_answer(sock: socket.socket) -> bytes:
    """One HTTP answer, head and body, as read from ``sock``."""
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
        if b"\r\n\r\n" in answer:
            head, _, rest = answer.partition(b"\r\n\r\n")
            if len(rest) >= int(re.search(rb"Content-Length: (\d+)", head).group(1)):
                break
    return answer


def test_header_blanks_and_case_are_read_as_http_says_and_a_line_without_colon_is_a_400(served):
    body = json.dumps({"instances": [[0.5] * 64]}).encode()
    ok = raw(
        served,
        f"POST /v1/models/{served.app.extensions['kml.infer'].spec['id']}:predict HTTP/1.1\n"
        f"AUTHORIZATION:   Bearer {served.token}  \nContent-Length: {len(body)}\n"
        "Connection: close",
        body,
    )
    assert ok.startswith(b"HTTP/1.1 200 ") and b'"predictions"' in ok
    bad = raw(served, "POST / HTTP/1.1\nContent-Length: 0\nthis line has no colon")
    assert bad.startswith(b"HTTP/1.1 400 ") and b"malformed request" in bad
    folded = raw(served, "POST / HTTP/1.1\nX-Long: one\n two\nContent-Length: 0")
    assert folded.startswith(b"HTTP/1.1 400 ")
