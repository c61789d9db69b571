"""Strict parsing of untrusted text: ASCII digits only, JSON that cannot blow the stack.

``str.isdigit`` is true for ``"²"`` and ``"٣"``, which ``int`` then refuses or reads as another
number, and ``json.loads`` raises ``RecursionError`` on deeply nested input. Both would turn bad
input into a 5xx (retried forever); these helpers keep it a ``ValueError`` the caller maps to 4xx.
"""

from __future__ import annotations

import json
import re
from typing import Any

_DIGITS = re.compile(r"[0-9]+")


def is_digits(text: Any) -> bool:
    """True for a non-empty string of ASCII digits only: ``"42"``, not ``"²"`` or ``" 4"``."""
    return isinstance(text, str) and _DIGITS.fullmatch(text) is not None


def loads(raw: str | bytes | bytearray) -> Any:
    """``json.loads`` whose nesting-depth failure is a ``ValueError`` like any other bad JSON."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
