"""Stream mode's pure parts: a polled batch of records -> the model's input, the outputs' values,
keys and headers exactly as the event path makes them for the same records.

No Kafka client here: the functions take record values, keys and headers, so unit tests call
them directly and compare against the event path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from functions.infer.batcher import Outputs, PredictionFailed, split_rows
from functions.infer.model import Model, conform
from kafkaml.errors import KmlError

_NOT_ALNUM = re.compile(r"[^a-z0-9]")
Headers = tuple[tuple[str, bytes], ...]


def event_headers(headers: Sequence[tuple[str, bytes | None]] | None) -> Headers:
    """The input's headers named as the event path gets them from KafkaSource: each name
    lower-cased without characters outside ``[a-z0-9]`` (the last of equal names wins),
    ``content-type`` left out (it becomes the event's content type), sorted by name. Values
    stay byte for byte: text headers match the event path's, and what HTTP headers cannot
    carry (control characters, text above U+00FF) is not lost here."""
    if not headers:
        return ()
    found: dict[str, bytes] = {}
    for name, value in headers:
        low = name.lower()
        if low == "content-type":
            continue
        short = _NOT_ALNUM.sub("", low)
        if short:
            found[short] = value or b""
    return tuple(sorted(found.items()))


def output_key(key: bytes | None, topic: str, partition: int, offset: int) -> bytes:
    """The input's key bytes as produced, or ``<topic>:<partition>:<offset>`` without one."""
    return key or f"{topic}:{partition}:{offset}".encode()


def output_values(outputs: Outputs) -> list[bytes]:
    """``{"values": row}`` per row, byte for byte what the event path produces for each row.

    One model output of flat rows (a classifier's probabilities) is written in one call for the
    whole batch (:func:`_flat_rows`); anything else row by row, as the event path does it.
    """
    rows = len(outputs[0]) if outputs else 0
    if rows == 0:
        return []
    if len(outputs) == 1 and outputs[0].ndim == 2 and outputs[0].dtype.kind in "fiub":
        return [b'{"values":[' + row + b"]}" for row in _flat_rows(outputs[0])]
    return [_json(r) for r in split_rows(outputs)]


def _json(value: Any) -> bytes:
    """The event path's encoding: ``json.dumps`` of ``{"values": ...}``, no spaces."""
    return json.dumps({"values": value}, separators=(",", ":")).encode()


def _flat_rows(x: np.ndarray) -> list[bytes]:
    """Each row of a 2-D array as ``json.dumps`` writes its ``tolist()``, without brackets.

    orjson writes NumPy arrays without a Python object per number, with the same shortest
    round-trip digits as Python's ``repr(float)`` (the event path's ``json.dumps``), and
    ints and bools as ``json`` does. It writes three kinds of floats otherwise: NaN and the
    infinities (``null``; ``json`` writes ``NaN``, ``Infinity``) and magnitudes below 1e-4
    (``0.00001``, ``2.5e-7``; ``json`` writes ``1e-05``, ``2.5e-07``). The rows holding one of
    those are written by ``json.dumps`` itself.
    """
    if x.dtype.kind == "f":
        x = np.ascontiguousarray(x, dtype=np.float64)  # tolist() makes Python floats: doubles
        magnitude = np.abs(x)
        odd = ~np.isfinite(x) | ((magnitude < 1e-4) & (magnitude > 0))
    else:
        x = np.ascontiguousarray(x)
        odd = np.zeros(x.shape, dtype=bool)
    rows = _split(orjson.dumps(x, option=orjson.OPT_SERIALIZE_NUMPY))
    redo = np.flatnonzero(odd.any(axis=1))
    if len(redo):
        again = _split(json.dumps(x[redo].tolist(), separators=(",", ":")).encode())
        for r, row in zip(redo.tolist(), again, strict=True):
            rows[r] = row
    return rows


def _split(text: bytes) -> list[bytes]:
    """``[[a,b],[c,d]]`` -> ``[b"a,b", b"c,d"]``."""
    return text[2:-2].split(b"],[")


@dataclass
class Decoded:
    """The model's input for the records that decoded, and why each other one did not."""

    groups: list[tuple[range, np.ndarray]] = field(default_factory=list)
    """Consecutive records and their conformed rows, in record order."""
    bad: list[tuple[int, KmlError]] = field(default_factory=list)
    """``(index, error)`` of each undecodable record: the error decoding it alone gives."""

    @property
    def ok(self) -> list[int]:
        return [i for span, _ in self.groups for i in span]


def decode_batch(codec: Any, model: Model, values: Sequence[bytes]) -> Decoded:
    """One codec call and one ``conform`` for the whole batch when every record decodes.

    A codec error names the record (``UndecodableRecord.index``): the batch is split around it,
    the parts before and after are decoded as batches again, and the record alone is decoded by
    itself, so it fails (or passes) exactly as it does on the event path, one record per request.
    Transient errors propagate: the batch is retried, never dead-lettered.
    """
    out = Decoded()
    pending = [(0, len(values))] if values else []
    while pending:
        start, end = pending.pop()
        try:
            x = codec.decode_features(values[start:end])
        except KmlError as e:
            if e.retryable:
                raise
            if end - start == 1:
                out.bad.append((start, e))
                continue
            at = start + int(getattr(e, "index", -1))
            if start <= at < end:
                parts = [(at + 1, end), (at, at + 1), (start, at)]
            else:  # no index: every record on its own
                parts = [(i, i + 1) for i in reversed(range(start, end))]
            pending.extend(p for p in parts if p[1] > p[0])
            continue
        try:
            x = conform(x, model)
        except KmlError as e:
            if e.retryable:
                raise
            # Rows of one decoded part share their shape: each alone fails the same way.
            out.bad.extend((i, e) for i in range(start, end))
            continue
        out.groups.append((range(start, end), x))
    out.bad.sort(key=lambda item: item[0])
    return out


def predict_groups(model: Model, decoded: Decoded) -> list[bytes]:
    """The output values of every decoded record, in record order: one model call for the
    batch (consecutive parts of the same shape are joined; LiteRT splits into its buckets)."""
    values: list[bytes] = []
    for x in _joined(decoded.groups):
        try:
            outputs = model.predict(x)
        except KmlError:
            raise
        except Exception as e:  # the model's own error: its kind, never its traceback
            raise PredictionFailed(
                f"the model failed on a batch of {len(x)}: {type(e).__name__}"
            ) from None
        if any(len(o) != len(x) for o in outputs):
            raise PredictionFailed(f"the model returned outputs that do not match {len(x)} rows")
        values += output_values(outputs)
    return values


def _joined(groups: list[tuple[range, np.ndarray]]) -> list[np.ndarray]:
    runs: list[list[np.ndarray]] = []
    for _, x in groups:
        if runs and runs[-1][0].shape[1:] == x.shape[1:] and runs[-1][0].dtype == x.dtype:
            runs[-1].append(x)
        else:
            runs.append([x])
    return [run[0] if len(run) == 1 else np.concatenate(run) for run in runs]
