"""Fixtures of the fault-injection suite (real broker and MinIO; tests that restart a part run
their own private stack so the session's stack is never disturbed)."""

from __future__ import annotations

from tests.functions.infer.conftest import digits  # noqa: F401  (the trained tiny model)
