"""Training ingest: offset ranges -> NumPy arrays, against the floor and a Kafka-ML-style loop.

1,000,000 records of 100 float32 features + a label on a 3-partition topic (``--records``).
- ours: the train function's reader + decoder (``read_offset_ranges`` + ``RawCodec``);
- floor: confluent-kafka batched ``consume`` of the same ranges, payloads discarded;
- Kafka-ML-style: ``poll`` one message at a time, ``np.frombuffer`` each into a Python list.
"""

from __future__ import annotations

import argparse

import numpy as np
from confluent_kafka import Consumer, TopicPartition

from bench.common import Result, Timer, bench_stack, console
from kafkaml.codecs import codec_for
from kafkaml.kafka import ConfirmingProducer, ensure_topic, read_offset_ranges
from kafkaml.wire import OffsetRange

FEATURES = 100
CONFIG = {
    "data_type": "float32",
    "data_reshape": str(FEATURES),
    "label_type": "uint8",
    "label_reshape": "1",
}


def publish(bootstrap: str, topic: str, n: int) -> list[OffsetRange]:
    ensure_topic(bootstrap, topic, partitions=3)
    rng = np.random.default_rng(0)
    producer = ConfirmingProducer(
        bootstrap,
        timeout_s=120,
        config={
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "compression.type": "none",
            "queue.buffering.max.messages": 500_000,
        },
    )
    chunk = 50_000
    for start in range(0, n, chunk):
        x = rng.random((min(chunk, n - start), FEATURES), dtype=np.float32)
        for i, row in enumerate(x):
            producer.produce(
                topic, row.tobytes(), bytes([(start + i) % 10]), partition=(start + i) % 3
            )
    producer.flush()
    return producer.ranges(topic)


def _consumer(bootstrap: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "bench-ingest",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "auto.offset.reset": "error",
        }
    )


def floor(bootstrap: str, ranges: list[OffsetRange]) -> int:
    """Batched consume of the same ranges; payloads discarded."""
    consumer = _consumer(bootstrap)
    consumer.assign([TopicPartition(r.topic, r.partition, r.start) for r in ranges])
    ends = {r.partition: r.end for r in ranges}
    left, seen = sum(r.count for r in ranges), 0
    while left > 0:
        for msg in consumer.consume(5000, timeout=1.0):
            if msg.error() is None and msg.offset() < ends[msg.partition()]:
                left -= 1
                seen += 1
    consumer.close()
    return seen


def kafka_ml_style(bootstrap: str, ranges: list[OffsetRange]) -> int:
    """Kafka-ML's loop: poll one message at a time, decode each with np.frombuffer into a list."""
    consumer = _consumer(bootstrap)
    xs, ys = [], []
    for r in ranges:
        consumer.assign([TopicPartition(r.topic, r.partition, r.start)])
        for _ in range(r.count):
            msg = consumer.poll(10)
            while msg is None or msg.error() is not None:
                msg = consumer.poll(10)
            xs.append(np.frombuffer(msg.value(), dtype=np.float32).reshape(FEATURES))
            ys.append(np.frombuffer(msg.key(), dtype=np.uint8))
        consumer.unassign()
    consumer.close()
    return len(xs)


def ours(bootstrap: str, ranges: list[OffsetRange]) -> int:
    records = read_offset_ranges(bootstrap, ranges, timeout_s=60)
    codec = codec_for("RAW", CONFIG)
    x = codec.decode_features(records.values)
    y = codec.decode_labels(records.keys)
    assert x.shape == (len(records), FEATURES) and y.shape[0] == len(records)
    return len(records)


def run(records: int, settings) -> Result:
    topic = f"bench-ingest-{records}"
    with Timer() as t:
        ranges = publish(settings.kafka_bootstrap, topic, records)
    console.print(f"published {records:,} records in {t.seconds:.1f}s")
    result = Result("ingest", f"Training ingest: {records:,} records x {FEATURES} float32")
    rates = {}
    for name, fn in (
        ("floor (batched consume, discard)", floor),
        ("ours (read_offset_ranges + RawCodec)", ours),
        ("Kafka-ML style (poll one + frombuffer)", kafka_ml_style),
    ):
        with Timer() as t:
            n = fn(settings.kafka_bootstrap, ranges)
        assert n == records, f"{name} read {n} of {records}"
        rates[name] = records / t.seconds
        result.rows.append({"reader": name, "seconds": t.seconds, "records/s": rates[name]})
        console.print(f"{name}: {t.seconds:.2f}s")
    floor_rate, ours_rate, kml_rate = rates.values()
    result.ratios = {
        "ours / floor": ours_rate / floor_rate,
        "ours / Kafka-ML style": ours_rate / kml_rate,
    }
    result.targets = {"ours / floor": ">= 0.5x", "ours / Kafka-ML style": ">= 10x"}
    return result


def main(argv: list[str] | None = None) -> Result:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    with bench_stack() as settings:
        result = run(args.records, settings)
    result.show()
    result.save()
    return result


if __name__ == "__main__":
    main()
