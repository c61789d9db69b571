"""Property-based tests over everything that reads untrusted bytes: the Kafka-ML wire parser,
the record codecs, the CloudEvent binding and the infer app's routes. Whatever arrives, the
answer is a value or a 4xx naming the problem: never a 5xx (retried forever) and never an
uncaught exception."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from functions.infer.app import create_app
from kafkaml.errors import KmlError
from kafkaml.events import parse_http
from kafkaml.wire import ControlMessage, codec_for, parse_control_message, parse_topic_ranges
from tests.functions.infer.fakes import LinearModel, RecordingProducer, fixed_loader
from tests.functions.infer.fakes import settings as infer_settings

RUNS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
tricky_text = st.text(alphabet="0123456789 :,-_.²٣ⅷ\x00\n\t aZ", max_size=30)
dtypes = st.sampled_from(
    ["uint8", "int32", "int64", "float16", "float32", "float64", "bool", "complex64", "U8",
     "V4", "object", "(2)i4", "<f8", "datetime64", "", "void", "S3", "m8"]
) | st.text(max_size=10) | json_values  # fmt: skip
shapes = (
    tricky_text | st.lists(st.integers(-3, 10**12) | st.text(max_size=3), max_size=4) | json_values
)
avro_fields = st.lists(
    st.fixed_dictionaries(
        {"name": st.text(alphabet="abcxyz_", min_size=1, max_size=4)},
        optional={
            "type": st.sampled_from(["int", "long", "float", "double", "boolean", "string", "null"])
            | st.fixed_dictionaries(
                {"type": st.just("array"), "items": st.sampled_from(["float", "int", "x"])}
            )
            | json_values
        },
    ),
    max_size=4,
)
avro_schemas = (
    st.fixed_dictionaries(
        {"type": st.just("record"), "name": st.text(alphabet="ABC", min_size=1, max_size=3),
         "fields": avro_fields}
    )
    | json_values
)  # fmt: skip
input_configs = st.fixed_dictionaries(
    {},
    optional={
        "data_type": dtypes,
        "data_reshape": shapes,
        "label_type": dtypes,
        "label_reshape": shapes,
        "data_scheme": avro_schemas | avro_schemas.map(json.dumps) | st.text(max_size=20),
        "label_scheme": avro_schemas | avro_schemas.map(json.dumps),
    },
)
formats = st.sampled_from(["RAW", "AVRO", "JSON", "raw", "avro", "json", "CSV", ""]) | json_values
control_bodies = st.fixed_dictionaries(
    {},
    optional={
        "topic": tricky_text | json_values,
        "input_format": formats,
        "input_config": input_configs | json_values,
        "configuration": input_configs,
        "validation_rate": scalars,
        "test_rate": scalars,
        "total_msg": scalars,
        "description": scalars,
        "incremental": scalars,
        "unsupervised_topic": scalars,
        "dataset_restrictions": json_values,
    },
)
keys = st.none() | st.binary(max_size=8) | st.text(max_size=8)


def _refused_cleanly(e: KmlError) -> None:
    assert 400 <= e.status < 500, f"{e.status} {e.message}"


@RUNS
@given(body=control_bodies | json_values, key=keys, raw=st.none() | st.binary(max_size=64))
def test_control_messages_parse_or_are_refused_with_a_4xx(body, key, raw):
    value = raw if raw is not None else json.dumps(body, allow_nan=True).encode()
    try:
        msg = parse_control_message(value, key)
    except KmlError as e:
        _refused_cleanly(e)
        return
    assert isinstance(msg, ControlMessage) and msg.ranges


@RUNS
@given(body=control_bodies, deployment_id=st.none() | st.text(max_size=10) | json_values)
def test_a_named_deployment_id_of_any_kind_is_checked_not_crashed_on(body, deployment_id):
    try:
        parse_control_message(json.dumps(body).encode(), None, deployment_id=deployment_id)
    except KmlError as e:
        _refused_cleanly(e)


@RUNS
@given(topic=tricky_text | json_values | st.text(max_size=40))
def test_topic_ranges_never_raise(topic):
    ranges, problems = parse_topic_ranges(topic)
    assert bool(ranges) or bool(problems)
    assert all(r.end >= r.start >= 0 and r.partition >= 0 for r in ranges)


@RUNS
@given(
    fmt=formats,
    config=input_configs | json_values,
    values=st.lists(st.binary(max_size=40), max_size=4),
    keys=st.lists(st.binary(max_size=16), max_size=4),
)
# Found by this test: NumPy's dtype parser raises ValueError and SyntaxError too (a 5xx), and
# a JSON batch of no records failed to reshape.
@example(fmt="RAW", config={"data_type": "0:"}, values=[], keys=[])
@example(fmt="JSON", config={"data_type": "(01,)i4"}, values=[], keys=[])
@example(fmt="JSON", config={}, values=[], keys=[])
def test_codecs_build_and_decode_or_refuse_with_a_4xx(fmt, config, values, keys):
    try:
        codec = codec_for(fmt, config)
    except KmlError as e:
        _refused_cleanly(e)
        return
    for decode, blobs in ((codec.decode_features, values), (codec.decode_labels, keys)):
        try:
            out = decode(blobs)
        except KmlError as e:
            _refused_cleanly(e)
            continue
        assert isinstance(out, np.ndarray) and len(out) == len(blobs)


@RUNS
@given(
    fmt=st.sampled_from(["RAW", "JSON", "AVRO"]),
    config=input_configs,
    values=st.lists(
        st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
        min_size=1,
        max_size=4,
    ),
)
def test_codecs_of_valid_configs_decode_json_or_bytes_or_refuse_with_a_4xx(fmt, config, values):
    try:
        codec = codec_for(fmt, config)
    except KmlError:
        return
    try:
        codec.decode_features(values)
    except KmlError as e:
        _refused_cleanly(e)


header_names = st.sampled_from(
    ["ce-specversion", "ce-type", "ce-id", "ce-source", "ce-time", "ce-subject",
     "ce-datacontenttype", "ce-key", "ce-knativekafkaoffset", "ce-knativekafkapartition",
     "ce-kafkaheadertrace", "content-type", "ce-", "ce-dataschema"]
) | st.text(alphabet="abce-", min_size=1, max_size=8)  # fmt: skip
# An HTTP server never hands a header value with a line break to the app (it ends the header).
header_values = st.text(st.characters(blacklist_characters="\r\n"), max_size=30) | st.sampled_from(
    ["1.0", "0.3", "dev.knative.kafka.event", "application/cloudevents+json",
     "application/json", "2026-13-45T99:99:99Z", "%41%zz", "partition:0/offset:1"]
)  # fmt: skip


@RUNS
@given(
    headers=st.dictionaries(header_names, header_values, max_size=8),
    body=st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()),
)
def test_the_cloudevent_binding_parses_or_refuses_with_a_4xx(headers, body):
    try:
        event = parse_http(headers, body)
    except KmlError as e:
        _refused_cleanly(e)
        return
    assert isinstance(event.type, str)


@pytest.fixture(scope="module")
def client():
    app = create_app(
        infer_settings(),
        loader=fixed_loader(LinearModel()),
        producer_factory=lambda s: RecordingProducer(),
    )
    assert app.extensions["kml.infer"].wait_ready(5)
    yield app.test_client()
    app.extensions["kml.infer"].close()


def _kafka_headers(extra: dict[str, str]) -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-type": "dev.knative.kafka.event",
        "ce-id": "partition:0/offset:1",
        "ce-source": "/apis/v1/namespaces/kml/kafkasources/kml-infer-digits-1#in",
        "ce-key": base64.b64encode(b"k").decode(),
        **extra,
    }


@RUNS
@given(
    body=st.binary(max_size=300) | st.just(np.ones(64, np.float32).tobytes()),
    extra=st.dictionaries(header_names, header_values, max_size=4),
)
def test_the_kafka_path_answers_any_record_without_a_5xx(client, body, extra):
    r = client.post("/", data=body, headers=_kafka_headers(extra))
    assert r.status_code < 500, r.get_data(as_text=True)[:300]
    assert r.is_json


@RUNS
@given(body=json_values)
def test_kserve_and_the_cloudevent_request_answer_any_json_without_a_5xx(client, body):
    raw = json.dumps(body, allow_nan=True)
    kserve = client.post(
        "/v1/models/digits-1:predict", data=raw, headers={"content-type": "application/json"}
    )
    assert kserve.status_code < 500, kserve.get_data(as_text=True)[:300]
    event = client.post(
        "/",
        data=raw,
        headers={
            "ce-specversion": "1.0",
            "ce-type": "kml.inference.request",
            "ce-id": "r",
            "ce-source": "/fuzz",
            "content-type": "application/json",
        },
    )
    assert event.status_code < 500, event.get_data(as_text=True)[:300]
