"""Datasource SDK that Kafka-ML users recognise: ``RawSink``, ``AvroSink``, plus ``JsonSink``.

    sink = RawSink("127.0.0.1:9092", "digits", deployment_id="7", data_type="uint8",
                   label_type="uint8", data_reshape="8 8", label_reshape="1",
                   validation_rate=0.1, test_rate=0.1, control_topic="kml-control")
    for x, y in zip(images, labels):
        sink.send(data=x, label=y)
    control = sink.close()       # confirms every record, then publishes the control message

Unlike Kafka-ML's library, the offset ranges come from the producer's delivery reports (the
lowest and highest offset each partition confirmed), not from sampling end offsets, so records
other producers write before or after ours are not included. Deployment ids are strings;
``kafka_ml_key=True`` writes Kafka-ML's single byte instead (ids 0..255).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from kafkaml.codecs import AvroCodec, Codec, JsonCodec, RawCodec, codec_for
from kafkaml.errors import BadRequest
from kafkaml.kafka import ConfirmingProducer
from kafkaml.wire import ControlMessage, control_message_key, to_control_message_bytes


class KafkaMLSink:
    """Publishes training records to ``topic``; ``close()`` publishes the control message."""

    input_format = ""

    def __init__(
        self,
        bootstrap_servers: str | None = None,
        topic: str = "",
        deployment_id: str | int = "",
        description: str = "",
        validation_rate: float = 0,
        test_rate: float = 0,
        control_topic: str = "kml-control",
        group_id: str = "sink",
        *,
        boostrap_servers: str | None = None,
        kafka_ml_key: bool = False,
        timeout_s: float = 30.0,
        producer_config: dict[str, Any] | None = None,
    ) -> None:
        servers = bootstrap_servers or boostrap_servers  # Kafka-ML spells it "boostrap"
        if not servers or not topic or deployment_id in ("", None):
            raise ValueError("bootstrap_servers, topic and deployment_id are required")
        self.topic, self.deployment_id = topic, str(deployment_id)
        self.description, self.control_topic = description, control_topic
        self.validation_rate, self.test_rate = validation_rate, test_rate
        self.group_id = group_id  # kept for Kafka-ML compatibility; nothing is consumed
        self.kafka_ml_key = kafka_ml_key
        control_message_key(self.deployment_id, kafka_ml_key)  # fail now, not at close()
        self.input_config: dict[str, Any] = {}
        self._producer = ConfirmingProducer(servers, timeout_s, producer_config)
        self._codec: Codec | None = None
        self.total_messages = 0
        self.control_message: ControlMessage | None = None

    # -- sending ------------------------------------------------------------------------------
    def _codec_or_configure(self, data: Any, label: Any) -> Codec:
        if self._codec is None:
            self._codec = codec_for(self.input_format, self.input_config)
        return self._codec

    def send(self, data: Any, label: Any) -> None:
        """One training example (features and label)."""
        value, key = self._codec_or_configure(data, label).encode(data, label)
        self._producer.produce(self.topic, value, key)
        self.total_messages += 1

    def send_value(self, data: Any) -> None:
        """One example without a label."""
        value, _ = self._codec_or_configure(data, None).encode(data, None)
        self._producer.produce(self.topic, value)
        self.total_messages += 1

    def send_batch(self, data: Any, labels: Any) -> None:
        """Every example of two aligned arrays."""
        for x, y in zip(data, labels, strict=True):
            self.send(x, y)

    def flush(self) -> None:
        """Wait until every record sent so far is confirmed (no control message is sent)."""
        self._producer.flush()

    # -- closing ------------------------------------------------------------------------------
    def control(self) -> ControlMessage:
        """The control message naming exactly the confirmed offsets (after ``flush``)."""
        ranges = self._producer.ranges(self.topic)
        if not ranges:
            raise BadRequest("no record was confirmed: nothing to train on")
        return ControlMessage(
            deployment_id=self.deployment_id,
            topic=",".join(str(r) for r in ranges),
            input_format=self.input_format,
            input_config=dict(self.input_config),
            validation_rate=self.validation_rate,
            test_rate=self.test_rate,
            total_msg=sum(r.count for r in ranges),
            description=self.description,
        )

    def close(self) -> ControlMessage:
        """Confirm every record, publish the control message, wait for its confirmation."""
        self._producer.flush()
        message = self.control()
        self._producer.produce(
            self.control_topic,
            to_control_message_bytes(message),
            control_message_key(self.deployment_id, self.kafka_ml_key),
        )
        self._producer.flush()
        self.control_message = message
        return message

    def __enter__(self) -> KafkaMLSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._producer.flush()


def _shape_text(value: Any) -> str:
    shape = np.shape(value)
    return " ".join(str(d) for d in shape) if shape else "1"


class RawSink(KafkaMLSink):
    """RAW: ``ndarray.tobytes()`` values and keys; unset types/shapes come from the first send."""

    input_format = "RAW"

    def __init__(
        self,
        bootstrap_servers: str | None = None,
        topic: str = "",
        deployment_id: str | int = "",
        data_type: str | None = None,
        label_type: str | None = None,
        description: str = "",
        data_reshape: str | None = None,
        label_reshape: str | None = None,
        validation_rate: float = 0,
        test_rate: float = 0,
        control_topic: str = "kml-control",
        group_id: str = "sink",
        **options: Any,
    ) -> None:
        super().__init__(
            bootstrap_servers,
            topic,
            deployment_id,
            description,
            validation_rate,
            test_rate,
            control_topic,
            group_id,
            **options,
        )
        self.input_config = {
            "data_type": data_type,
            "label_type": label_type,
            "data_reshape": data_reshape,
            "label_reshape": label_reshape,
        }

    def _codec_or_configure(self, data: Any, label: Any) -> Codec:
        if self._codec is None:
            cfg = self.input_config
            if cfg["data_type"] is None:
                cfg["data_type"] = np.asarray(data).dtype.name
                cfg["data_reshape"] = cfg["data_reshape"] or _shape_text(data)
            if cfg["label_type"] is None and label is not None:
                cfg["label_type"] = np.asarray(label).dtype.name
                cfg["label_reshape"] = cfg["label_reshape"] or _shape_text(label)
            self._codec = codec_for("RAW", cfg)
        assert isinstance(self._codec, RawCodec)
        return self._codec


class JsonSink(KafkaMLSink):
    """JSON: value ``{"data": [...]}``, key the label as JSON."""

    input_format = "JSON"

    def __init__(
        self,
        bootstrap_servers: str | None = None,
        topic: str = "",
        deployment_id: str | int = "",
        data_type: str = "float32",
        label_type: str = "float32",
        description: str = "",
        data_reshape: str | None = None,
        label_reshape: str | None = None,
        validation_rate: float = 0,
        test_rate: float = 0,
        control_topic: str = "kml-control",
        group_id: str = "sink",
        **options: Any,
    ) -> None:
        super().__init__(
            bootstrap_servers,
            topic,
            deployment_id,
            description,
            validation_rate,
            test_rate,
            control_topic,
            group_id,
            **options,
        )
        self.input_config = {
            "data_type": data_type,
            "label_type": label_type,
            "data_reshape": data_reshape,
            "label_reshape": label_reshape,
        }
        self._codec = codec_for("JSON", self.input_config)
        assert isinstance(self._codec, JsonCodec)


class AvroSink(KafkaMLSink):
    """AVRO: schemaless records of ``data_scheme`` / ``label_scheme`` (files or schema text)."""

    input_format = "AVRO"

    def __init__(
        self,
        bootstrap_servers: str | None = None,
        topic: str = "",
        deployment_id: str | int = "",
        data_scheme_filename: str | None = None,
        label_scheme_filename: str | None = None,
        description: str = "",
        validation_rate: float = 0,
        test_rate: float = 0,
        control_topic: str = "kml-control",
        group_id: str = "sink",
        *,
        data_scheme: str | dict | None = None,
        label_scheme: str | dict | None = None,
        **options: Any,
    ) -> None:
        super().__init__(
            bootstrap_servers,
            topic,
            deployment_id,
            description,
            validation_rate,
            test_rate,
            control_topic,
            group_id,
            **options,
        )
        data = data_scheme or Path(str(data_scheme_filename)).read_text()
        label = label_scheme or Path(str(label_scheme_filename)).read_text()
        self.input_config = {
            "data_scheme": data if isinstance(data, str) else json.dumps(data),
            "label_scheme": label if isinstance(label, str) else json.dumps(label),
        }
        self._codec = codec_for("AVRO", self.input_config)
        assert isinstance(self._codec, AvroCodec)

    def send_avro(self, data: dict[str, Any], label: dict[str, Any]) -> None:
        """Kafka-ML's name for ``send`` with record dicts."""
        self.send(data, label)
