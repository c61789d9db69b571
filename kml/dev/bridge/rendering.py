"""How Knative's dispatcher (a JVM program) renders values, reproduced in Python (pure functions).

- HTTP header values: sent raw, never percent-encoded; U+0080..U+00FF as single Latin-1 bytes,
  anything above U+00FF as ``?``; leading and trailing spaces and tabs do not survive HTTP; a
  control character (0x00..0x08, 0x0A..0x1F, 0x7F) makes the HTTP client refuse the request
  before anything is sent (``Unsendable``).
- Times: ISO 8601 with the fraction's trailing zeros dropped and ``Z`` for UTC
  (``...:20Z``, ``...:20.3Z``, ``...:20.123Z``); a passed-through ``+00:00`` becomes ``Z``.
- Numbers: Java's ``Float.toString`` / ``Double.toString`` (``1.0E-7``, ``2.0``).
- JSON: what Jackson writes for a parsed value: compact, raw UTF-8, doubles as Java prints them.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import numpy as np

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_HTTP_WHITESPACE = " \t"
_TIME = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})T(?P<hm>\d{2}:\d{2})(?::(?P<s>\d{2})(?:\.(?P<frac>\d{1,9}))?)?"
    r"(?P<offset>Z|[+-]\d{2}:\d{2}(?::\d{2})?)$"
)


class Unsendable(ValueError):
    """An attribute value the dispatcher's HTTP client refuses to put in a header."""


def header_value(name: str, value: str) -> bytes:
    """The bytes the header ``name`` carries on the wire for the attribute text ``value``."""
    bad = _CONTROL.search(value)
    if bad:
        raise Unsendable(
            f"header {name} holds the control character {bad.group()!r}: the HTTP client "
            "refuses the request before sending it"
        )
    text = value.strip(_HTTP_WHITESPACE)
    return "".join(ch if ord(ch) <= 0xFF else "?" for ch in text).encode("latin-1")


def as_received(name: str, value: str) -> str:
    """The text a receiver reads from that header (HTTP header bytes are Latin-1)."""
    return header_value(name, value).decode("latin-1")


def java_instant(timestamp_ms: int) -> str:
    """A record timestamp (ms since the epoch) as the dispatcher writes ``time``."""
    moment = datetime.fromtimestamp(timestamp_ms // 1000, tz=UTC)
    millis = f"{timestamp_ms % 1000:03d}".rstrip("0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{millis}" if millis else "") + "Z"


def java_time(text: str) -> str:
    """An RFC 3339 ``time`` parsed and written again the way the dispatcher does; ValueError
    when it does not parse (the record is then no valid CloudEvent)."""
    m = _TIME.match(text)
    if not m:
        raise ValueError(f"time {text!r} is not an RFC 3339 timestamp")
    try:
        datetime.fromisoformat(f"{m['date']}T{m['hm']}:{m['s'] or '00'}")
    except ValueError:
        raise ValueError(f"time {text!r} is not a valid date and time") from None
    frac = (m["frac"] or "").rstrip("0")
    offset = m["offset"]
    if offset in ("+00:00", "-00:00", "+00:00:00", "-00:00:00"):
        offset = "Z"
    elif offset.endswith(":00") and len(offset) == 9:
        offset = offset[:6]
    return f"{m['date']}T{m['hm']}:{m['s'] or '00'}" + (f".{frac}" if frac else "") + offset


def java_float(value: float, single: bool) -> str:
    """Java's ``Float.toString`` / ``Double.toString``."""
    x = np.float32(value) if single else np.float64(value)
    if np.isnan(x):
        return "NaN"
    if np.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "-0.0" if np.signbit(x) else "0.0"
    if 1e-3 <= abs(float(x)) < 1e7:
        text = np.format_float_positional(x, unique=True, trim="0")
        return text + "0" if text.endswith(".") else text
    mantissa, exponent = np.format_float_scientific(x, unique=True, trim="0").split("e")
    if mantissa.endswith("."):
        mantissa += "0"
    return f"{mantissa}E{int(exponent)}"


def jackson_json(value: Any) -> str:
    """``value`` (as ``json.loads`` gives it) written the way Jackson writes a parsed tree."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return java_float(value, single=False)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ",".join(jackson_json(v) for v in value) + "]"
    if isinstance(value, dict):
        members = (f"{jackson_json(str(k))}:{jackson_json(v)}" for k, v in value.items())
        return "{" + ",".join(members) + "}"
    raise TypeError(f"not a JSON value: {type(value).__name__}")
