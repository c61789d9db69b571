"""The test session's own token, admitted by every function a test builds and sent by every
Flask test client (``tests/conftest.py``), so tests that are not about access need nothing.

``SESSION_AUTH`` is the settings that use it: a hashed tokens table in a private temporary
folder holding one token with every scope. The local stacks the session starts make their own
tokens (``kml.dev.access``), and a test client sends whichever token its app's settings carry.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from kafkaml.auth import SCOPES, add_token

_HOME = Path(tempfile.mkdtemp(prefix="kml-test-tokens-"))
atexit.register(shutil.rmtree, _HOME, True)
TOKENS_FILE = _HOME / "tokens.json"
TOKEN = add_token(TOKENS_FILE, "test-session", SCOPES)
SESSION_AUTH = {"auth_tokens_file": str(TOKENS_FILE), "auth_token": TOKEN}
"""``Settings(**SESSION_AUTH)``: a function admitting, and a client sending, the session token."""


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
