"""Record codecs of the Kafka-ML wire: RAW, AVRO (schemaless) and JSON (ours).

A codec turns a batch of record values (features) and keys (labels) into NumPy arrays of
shape ``[n, *reshape]`` in one go, and encodes one example back into ``(value, key)``.
``kafkaml.wire`` re-exports everything public here.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from typing import Any

import fastavro
import numpy as np

from kafkaml.errors import BadRequest, ValidationFailed
from kafkaml.parsing import is_digits, loads

_NUMERIC_KINDS = "biuf"
_AVRO_INT = {"int", "long", "boolean"}
_AVRO_NUMBER = _AVRO_INT | {"float", "double"}


class InvalidControlMessage(ValidationFailed):
    """A control message (or input config) with bad fields; ``problems`` names each one."""

    kind = "invalid_control_message"


class UndecodableRecord(BadRequest):
    """A record that does not decode with the declared format; names the record index."""

    kind = "undecodable_record"

    def __init__(self, reason: str, index: int) -> None:
        super().__init__(f"record {index}: {reason}", index=int(index), reason=reason)
        self.index = int(index)
        self.reason = reason


# -- config parsing ---------------------------------------------------------------------------
def _dtype(config: dict[str, Any], name: str, problems: list[str], default: str | None = None):
    value = config.get(name, default)
    if value is None:
        problems.append(f"input_config.{name}: required (a NumPy dtype name such as 'uint8')")
        return None
    try:
        dtype = np.dtype(value) if isinstance(value, str) else None
    except Exception:  # NumPy's dtype parser raises TypeError, ValueError, SyntaxError, ...
        dtype = None
    if dtype is None or dtype.kind not in _NUMERIC_KINDS:
        problems.append(
            f"input_config.{name}: {value!r} is not a numeric NumPy dtype "
            "(uint8, int32, int64, float32, float64, bool, ...)"
        )
        return None
    return dtype


def _shape(config: dict[str, Any], name: str, problems: list[str]) -> tuple[int, ...] | None:
    value = config.get(name)
    if value is None or value == "" or value == []:
        return None
    parts = value.split() if isinstance(value, str) else value
    if (
        isinstance(parts, (list, tuple))
        and parts
        and all(is_digits(p) or (isinstance(p, int) and not isinstance(p, bool)) for p in parts)
    ):
        dims = tuple(int(p) for p in parts)
        if all(d > 0 for d in dims):
            return dims
    problems.append(
        f"input_config.{name}: {value!r} must be positive integers separated by "
        "spaces, such as '28 28'"
    )
    return None


def _numeric_avro(t: Any) -> bool:
    if isinstance(t, str):
        return t in _AVRO_NUMBER
    if isinstance(t, dict):
        if t.get("type") == "array":
            return _numeric_avro(t.get("items"))
        return t.get("type") in _AVRO_NUMBER
    return False


def _avro_schema(config: dict[str, Any], name: str, problems: list[str], required: bool):
    raw = config.get(name)
    if raw is None:
        if required:
            problems.append(f"input_config.{name}: required (an Avro record schema)")
        return None
    schema = raw
    if isinstance(raw, str):
        try:
            schema = json.loads(raw)
        except ValueError:
            try:  # Kafka-ML accepts a Python-style dict text and swaps the quotes
                schema = json.loads(raw.replace("'", '"'))
            except ValueError as e:
                problems.append(f"input_config.{name}: not JSON: {e}")
                return None
    if not isinstance(schema, dict) or schema.get("type") != "record" or not schema.get("fields"):
        problems.append(f"input_config.{name}: must be an Avro record schema with fields")
        return None
    try:
        parsed = fastavro.parse_schema(schema)
    except Exception as e:  # fastavro raises several types for untrusted schema text
        problems.append(f"input_config.{name}: invalid Avro schema: {e}")
        return None
    bad = [f.get("name") for f in schema["fields"] if not _numeric_avro(f.get("type"))]
    if bad:
        problems.append(
            f"input_config.{name}: fields {bad} are not numeric "
            "(int, long, float, double, boolean or arrays of them)"
        )
        return None
    return parsed


# -- shared decoding --------------------------------------------------------------------------
def _lengths(blobs: Sequence[bytes | None], what: str) -> np.ndarray:
    try:
        return np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs))
    except TypeError:
        index = next(i for i, b in enumerate(blobs) if b is None)
        raise UndecodableRecord(f"has no {what}", index) from None


def _decode_fixed(
    blobs: Sequence[bytes], dtype: np.dtype, shape: tuple[int, ...] | None, what: str
) -> np.ndarray:
    """One ``np.frombuffer`` over the joined buffer; sizes are checked before, vectorised."""
    n = len(blobs)
    lengths = _lengths(blobs, what)
    if n == 0:
        return np.empty((0, *(shape or (0,))), dtype=dtype)
    expected = math.prod(shape) * dtype.itemsize if shape else int(lengths[0])
    bad = np.flatnonzero(lengths != expected)
    if bad.size == 0 and expected % dtype.itemsize:
        bad = np.array([0])
    if bad.size or expected == 0:
        i = int(bad[0]) if bad.size else 0
        need = (
            f"{expected} ({dtype.name} x {' '.join(map(str, shape))})"
            if shape
            else f"a multiple of {dtype.itemsize} equal for every record ({expected})"
        )
        raise UndecodableRecord(f"{what} has {int(lengths[i])} bytes; expected {need}", i)
    flat = np.frombuffer(b"".join(blobs), dtype=dtype)
    return flat.reshape(n, *(shape or (expected // dtype.itemsize,)))


def _json_rows(blobs: Sequence[bytes], what: str) -> list[Any]:
    """Parse every record with one ``json.loads``; fall back per record to name a bad one."""
    _lengths(blobs, what)
    try:
        rows = loads(b"[" + b",".join(blobs) + b"]")
        if isinstance(rows, list) and len(rows) == len(blobs):
            return rows
    except (ValueError, UnicodeDecodeError):
        pass
    for i, blob in enumerate(blobs):
        try:
            loads(blob)
        except (ValueError, UnicodeDecodeError) as e:
            raise UndecodableRecord(f"{what} is not JSON: {e}", i) from None
    raise UndecodableRecord(f"{what} is not a single JSON value", 0)


def _to_array(
    rows: list[Any], dtype: np.dtype, shape: tuple[int, ...] | None, what: str
) -> np.ndarray:
    """One ``np.asarray`` when the rows are regular; else per record, naming the bad one."""
    n = len(rows)
    if n == 0:
        return np.empty((0, *(shape or (0,))), dtype=dtype)
    try:
        arr: np.ndarray | None = np.asarray(rows, dtype=dtype)
    except (ValueError, TypeError):
        arr = None
    if arr is None or (shape is not None and arr.size != n * math.prod(shape)):
        size = math.prod(shape) if shape else None
        flat = []
        for i, row in enumerate(rows):
            try:
                values = np.asarray(row, dtype=dtype).ravel()
            except (ValueError, TypeError):
                raise UndecodableRecord(f"{what} is not numeric ({dtype.name})", i) from None
            size = values.size if size is None else size
            if values.size != size:
                need = f"reshape {' '.join(map(str, shape))} needs" if shape else "record 0 has"
                raise UndecodableRecord(f"{what} has {values.size} values; {need} {size}", i)
            flat.append(values)
        arr = np.stack(flat) if flat else np.empty((0, size or 0), dtype=dtype)
    if shape is None:
        return arr.reshape(n, -1) if arr.ndim == 1 else arr
    return arr.reshape(n, *shape)


# -- codecs -----------------------------------------------------------------------------------
class Codec:
    """Decode batches of record values / keys into arrays; encode one example."""

    input_format = ""

    def decode_features(self, values: Sequence[bytes]) -> np.ndarray:
        raise NotImplementedError

    def decode_labels(self, keys: Sequence[bytes]) -> np.ndarray:
        raise NotImplementedError

    def encode(self, x: Any, y: Any = None) -> tuple[bytes, bytes | None]:
        raise NotImplementedError


class RawCodec(Codec):
    """``ndarray.tobytes()`` values and keys, C order, no header."""

    input_format = "RAW"

    def __init__(self, data_dtype, data_shape, label_dtype=None, label_shape=None) -> None:
        self.data_dtype, self.data_shape = np.dtype(data_dtype), data_shape
        self.label_dtype = np.dtype(label_dtype) if label_dtype is not None else None
        self.label_shape = label_shape

    def decode_features(self, values: Sequence[bytes]) -> np.ndarray:
        return _decode_fixed(values, self.data_dtype, self.data_shape, "value")

    def decode_labels(self, keys: Sequence[bytes]) -> np.ndarray:
        if self.label_dtype is None:
            raise UndecodableRecord("input_config has no label_type", 0)
        return _decode_fixed(keys, self.label_dtype, self.label_shape, "key (label)")

    def encode(self, x: Any, y: Any = None) -> tuple[bytes, bytes | None]:
        arr = np.ascontiguousarray(x, dtype=self.data_dtype)
        if self.data_shape and arr.size != math.prod(self.data_shape):
            raise ValueError(
                f"features have {arr.size} values; data_reshape needs {math.prod(self.data_shape)}"
            )
        if y is None:
            return arr.tobytes(), None
        return arr.tobytes(), np.ascontiguousarray(y, dtype=self.label_dtype).tobytes()


class JsonCodec(Codec):
    """Value: ``{"data": [...]}`` or a bare array; key: the label as JSON."""

    input_format = "JSON"

    def __init__(self, data_dtype, data_shape, label_dtype, label_shape) -> None:
        self.data_dtype, self.data_shape = np.dtype(data_dtype), data_shape
        self.label_dtype, self.label_shape = np.dtype(label_dtype), label_shape

    def decode_features(self, values: Sequence[bytes]) -> np.ndarray:
        rows = _json_rows(values, "value")
        rows = [r["data"] if isinstance(r, dict) and "data" in r else r for r in rows]
        return _to_array(rows, self.data_dtype, self.data_shape, "value")

    def decode_labels(self, keys: Sequence[bytes]) -> np.ndarray:
        return _to_array(
            _json_rows(keys, "key (label)"), self.label_dtype, self.label_shape, "key (label)"
        )

    def encode(self, x: Any, y: Any = None) -> tuple[bytes, bytes | None]:
        value = json.dumps({"data": np.asarray(x, dtype=self.data_dtype).tolist()}).encode()
        if y is None:
            return value, None
        return value, json.dumps(np.asarray(y, dtype=self.label_dtype).tolist()).encode()


class AvroCodec(Codec):
    """Schemaless Avro records; features are the record's fields in schema order."""

    input_format = "AVRO"

    def __init__(self, data_schema, label_schema=None, data_shape=None) -> None:
        self.data_schema, self.label_schema, self.data_shape = data_schema, label_schema, data_shape
        self.data_fields = [(f["name"], f["type"]) for f in data_schema["fields"]]
        self.label_fields = [(f["name"], f["type"]) for f in (label_schema or {}).get("fields", [])]
        ints = all(isinstance(t, str) and t in _AVRO_INT for _, t in self.label_fields)
        self.label_dtype = np.dtype(np.int64 if ints else np.float32)

    def _read(self, blobs: Sequence[bytes], schema, fields, what: str) -> list[list[Any]]:
        _lengths(blobs, what)
        rows = []
        for i, blob in enumerate(blobs):
            buf = io.BytesIO(blob)
            try:
                record = fastavro.schemaless_reader(buf, schema, None)
            except Exception as e:  # truncated or foreign bytes raise several types
                raise UndecodableRecord(
                    f"{what} is not Avro of the schema: {type(e).__name__}", i
                ) from None
            if buf.tell() != len(blob):
                raise UndecodableRecord(
                    f"{what} has {len(blob) - buf.tell()} bytes left over "
                    "after the schema's record",
                    i,
                )
            rows.append([record[name] for name, _ in fields])
        return rows

    def decode_features(self, values: Sequence[bytes]) -> np.ndarray:
        rows = self._read(values, self.data_schema, self.data_fields, "value")
        arr = _to_array(rows, np.dtype(np.float32), None, "value").reshape(len(rows), -1)
        if not self.data_shape:
            return arr
        if arr.shape[1] != math.prod(self.data_shape):
            need = " ".join(map(str, self.data_shape))
            raise UndecodableRecord(
                f"value has {arr.shape[1]} values; data_reshape {need} needs "
                f"{math.prod(self.data_shape)}",
                0,
            )
        return arr.reshape(len(rows), *self.data_shape)

    def decode_labels(self, keys: Sequence[bytes]) -> np.ndarray:
        if self.label_schema is None:
            raise UndecodableRecord("input_config has no label_scheme", 0)
        rows = self._read(keys, self.label_schema, self.label_fields, "key (label)")
        arr = _to_array(rows, self.label_dtype, None, "key (label)").reshape(len(rows), -1)
        return arr[:, 0] if arr.shape[1] == 1 else arr

    def _record(self, x: Any, fields) -> dict[str, Any]:
        if isinstance(x, dict):
            return x
        flat = np.ravel(np.asarray(x)).tolist()
        if len(fields) == 1 and isinstance(fields[0][1], dict):
            return {fields[0][0]: flat}
        if len(flat) != len(fields):
            raise ValueError(f"{len(flat)} values for {len(fields)} Avro fields")
        return {
            name: (float(v) if t in ("float", "double") else bool(v) if t == "boolean" else int(v))
            for (name, t), v in zip(fields, flat, strict=True)
        }

    def encode(self, x: Any, y: Any = None) -> tuple[bytes, bytes | None]:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, self.data_schema, self._record(x, self.data_fields))
        if y is None or self.label_schema is None:
            return out.getvalue(), None
        label = io.BytesIO()
        fastavro.schemaless_writer(label, self.label_schema, self._record(y, self.label_fields))
        return out.getvalue(), label.getvalue()


def _build(
    fmt: str, config: dict[str, Any], require_labels: bool
) -> tuple[Codec | None, list[str]]:
    problems: list[str] = []
    if fmt == "RAW":
        dd, ds = _dtype(config, "data_type", problems), _shape(config, "data_reshape", problems)
        has_label = require_labels or config.get("label_type") is not None
        ld = _dtype(config, "label_type", problems) if has_label else None
        ls = _shape(config, "label_reshape", problems)
        return (None if problems else RawCodec(dd, ds, ld, ls)), problems
    if fmt == "JSON":
        dd = _dtype(config, "data_type", problems, "float32")
        ds = _shape(config, "data_reshape", problems)
        ld = _dtype(config, "label_type", problems, "float32")
        ls = _shape(config, "label_reshape", problems)
        return (None if problems else JsonCodec(dd, ds, ld, ls)), problems
    if fmt == "AVRO":
        data = _avro_schema(config, "data_scheme", problems, True)
        label = _avro_schema(config, "label_scheme", problems, require_labels)
        shape = _shape(config, "data_reshape", problems)
        return (None if problems else AvroCodec(data, label, shape)), problems
    return None, [f"input_format: {fmt!r} is not one of RAW, AVRO, JSON"]


def codec_problems(input_format: str, input_config: dict[str, Any]) -> list[str]:
    """Every problem of a training input config (labels required)."""
    return _build(input_format.upper(), input_config, True)[1]


def codec_for(input_format: str, input_config: dict[str, Any]) -> Codec:
    """The codec of a format and its ``input_config``; labels optional (inference)."""
    if not isinstance(input_config, dict):
        raise InvalidControlMessage("invalid input config", ["input_config: must be an object"])
    codec, problems = _build(str(input_format).upper(), input_config, False)
    if codec is None:
        raise InvalidControlMessage(f"invalid input config: {'; '.join(problems)}", problems)
    return codec
