"""Input keys come out byte for byte on the output topic, whatever they hold, when the rendered
inference KafkaSource feeds infer through the bridge (which sends headers as the real
dispatcher does: a text key with a control byte would be dropped, non-Latin-1 text mangled)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kafkaml.manifests import render_inference_manifests
from tests.functions.infer.conftest import deploy, publish, read_topic, serve
from tests.kml.dev.bridge_helpers import kafka_sink, start_bridge

pytestmark = pytest.mark.integration

KEYS = [
    b"pct%41x",  # a percent sequence that must not be decoded
    b"50%25 off",
    "ключ".encode(),  # above U+00FF
    "café".encode(),
    "€uro".encode(),
    b"a\x07b",  # control byte
    b"\x00",
    b"\xff\xfe\x80",  # not UTF-8
    b" padded\t",  # whitespace HTTP would strip
    b"\t",
]


def test_keys_with_any_bytes_come_out_identical_through_the_bridge(stack, digits, tmp_path):
    deployment = deploy(stack, digits, tmp_path / "cache", tflite=True, partitions=1)
    served = serve(deployment, tmp_path / "infer")
    docs = render_inference_manifests(deployment.spec, deployment.settings)
    (source,) = [d for d in docs if d["kind"] == "KafkaSource"]
    assert source["metadata"]["labels"]["kafkasources.sources.knative.dev/key-type"] == (
        "byte-array"
    )
    source["spec"]["initialOffset"] = "earliest"  # a new topic: no race with the latest lookup
    dlq = deployment.settings.dlq_topic
    dead_letters = kafka_sink(dlq, dlq)
    dead_letters["metadata"]["namespace"] = source["metadata"]["namespace"]
    bridge = start_bridge(
        stack,
        tmp_path / "bridge",
        [source, dead_letters],
        {source["metadata"]["name"]: served.url},
    )
    try:
        publish(
            stack.kafka_bootstrap,
            deployment.spec["input_topic"],
            [
                (digits.inputs[i].astype(np.float32).tobytes(), key, [])
                for i, key in enumerate(KEYS)
            ],
        )
        outputs = read_topic(stack.kafka_bootstrap, deployment.spec["output_topic"], len(KEYS))
    finally:
        bridge.stop()
        served.proc.stop()
    assert sorted(m.key() for m in outputs) == sorted(KEYS)
    for m in outputs:  # each prediction keyed by its own input's key
        offset = int(dict(m.headers())["kml-input-offset"])
        assert m.key() == KEYS[offset]
        assert len(json.loads(m.value())["values"]) == 10
    assert read_topic(stack.kafka_bootstrap, dlq, 0, settle_s=0.5, timeout_s=2) == []
