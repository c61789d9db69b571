"""The training data of a control message: read once, decode once, shuffle with the seed, split."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kafkaml.codecs import UndecodableRecord
from kafkaml.errors import ValidationFailed
from kafkaml.kafka import RangeRecords, read_offset_ranges
from kafkaml.settings import Settings
from kafkaml.wire import ControlMessage, OffsetRange, codec_for

log = logging.getLogger("kml.train")

OffsetReader = Callable[[Settings, Sequence[OffsetRange]], RangeRecords]
"""Reads exactly the records of the offset ranges (unit tests pass an in-memory one)."""


def read_from_kafka(settings: Settings, ranges: Sequence[OffsetRange]) -> RangeRecords:
    """The records of ``ranges`` from the settings' Kafka, every wait and the bytes bounded."""
    return read_offset_ranges(
        settings.kafka,
        ranges,
        timeout_s=settings.kafka_timeout_s,
        max_bytes=settings.train_max_bytes,
    )


def check_record_cap(settings: Settings, ranges: Sequence[OffsetRange]) -> None:
    """422 before anything is read when the ranges span more records than one run may take."""
    total = sum(max(0, r.count) for r in ranges)
    if total > settings.train_max_records:
        raise ValidationFailed(
            "too many records for one run",
            [
                f"ranges: {total} records is above the cap of {settings.train_max_records} "
                "(KML_TRAIN_MAX_RECORDS)"
            ],
            limit=settings.train_max_records,
        )


@dataclass(frozen=True)
class Split:
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class Dataset:
    """Train / validation / test splits (validation and test may be empty)."""

    train: Split
    validation: Split
    test: Split
    seed: int

    def sizes(self) -> dict[str, int]:
        return {
            "train": len(self.train),
            "validation": len(self.validation),
            "test": len(self.test),
        }


def decode(
    msg: ControlMessage, values: list[bytes], keys: list[bytes | None]
) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of every record, as two arrays (one vectorised decode each)."""
    codec = codec_for(msg.input_format, msg.input_config)
    x = codec.decode_features(values)
    y = codec.decode_labels(keys)  # type: ignore[arg-type]  (None keys are named as errors)
    return x, y


def split(
    x: np.ndarray, y: np.ndarray, validation_rate: float, test_rate: float, seed: int
) -> Dataset:
    """Shuffle with ``seed`` (a class-sorted stream still trains well), then cut the splits."""
    n = len(x)
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_rate))
    n_val = int(round(n * validation_rate))
    if n - n_test - n_val < 1:
        raise UndecodableRecord(
            f"{n} records leave nothing to train on with validation_rate {validation_rate} and "
            f"test_rate {test_rate}",
            0,
        )
    test, val, train = np.split(order, [n_test, n_test + n_val])
    return Dataset(Split(x[train], y[train]), Split(x[val], y[val]), Split(x[test], y[test]), seed)


def load(
    settings: Settings, msg: ControlMessage, seed: int, reader: OffsetReader = read_from_kafka
) -> Dataset:
    """Read the ranges exactly once (from Kafka by default), decode, shuffle and split; the
    record cap is checked before reading, the byte cap while reading."""
    check_record_cap(settings, msg.ranges)
    records = reader(settings, msg.ranges)
    log.info(
        "read training data",
        extra={
            "fields": {
                "deployment": msg.deployment_id,
                "records": len(records),
                "ranges": records.counts,
            }
        },
    )
    if not len(records):
        raise UndecodableRecord("the offset ranges hold no data records (only markers?)", 0)
    x, y = decode(msg, records.values, records.keys)
    return split(x, y, msg.validation_rate, msg.test_rate, seed)
