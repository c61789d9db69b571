"""Bad input is a 4xx naming the problem, never a 5xx that KafkaSource would retry forever."""

from __future__ import annotations

import io
import json

import fastavro
import pytest

from kafkaml.codecs import codec_for
from kafkaml.errors import KmlError
from kafkaml.events import parse_http
from kafkaml.parsing import is_digits, loads
from kafkaml.wire import parse_control_message

RAW = {"data_type": "float32", "data_reshape": "8", "label_type": "uint8", "label_reshape": ""}
DEEP = b"[" * 5000 + b"]" * 5000


def control(topic: str, **config) -> bytes:
    body = {"topic": topic, "input_format": "RAW", "input_config": {**RAW, **config}}
    return json.dumps(body).encode()


def error_of(call) -> KmlError:
    with pytest.raises(KmlError) as info:
        call()
    return info.value


@pytest.mark.parametrize("text", ["²", "٣", " 4", "4 ", "", "-1", "1.0", "０"])
def test_only_ascii_digits_count_as_digits(text):
    assert not is_digits(text)
    assert is_digits("0042")


def test_a_superscript_offset_is_a_422_naming_the_topic_entry():
    e = error_of(lambda: parse_control_message(control("t:0:0:²"), b"1"))
    assert e.status == 422
    assert any("topic entry 0 't:0:0:²'" in p for p in e.problems)


def test_a_superscript_reshape_is_a_422_naming_the_field():
    e = error_of(lambda: parse_control_message(control("t:0:0:10", data_reshape="8 ²"), b"1"))
    assert e.status == 422
    assert any(p.startswith("input_config.data_reshape") for p in e.problems)


def test_deeply_nested_json_is_a_4xx_everywhere():
    with pytest.raises(ValueError, match="nested too deeply"):
        loads(DEEP)
    assert error_of(lambda: parse_control_message(DEEP, b"1")).status == 400
    codec = codec_for("JSON", {"data_type": "float32", "data_reshape": "2"})
    assert error_of(lambda: codec.decode_features([DEEP])).status == 400
    headers = {"content-type": "application/cloudevents+json"}
    assert error_of(lambda: parse_http(headers, DEEP)).status == 400


def test_an_avro_record_that_does_not_fit_the_reshape_is_a_400_naming_the_sizes():
    schema = {
        "type": "record",
        "name": "r",
        "fields": [{"name": "a", "type": "float"}, {"name": "b", "type": "float"}],
    }
    codec = codec_for("AVRO", {"data_scheme": json.dumps(schema), "data_reshape": "3"})
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), {"a": 1.0, "b": 2.0})
    e = error_of(lambda: codec.decode_features([buf.getvalue()]))
    assert e.status == 400
    assert "2 values; data_reshape 3 needs 3" in e.message
