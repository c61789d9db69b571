"""The dashboard's way to register: its read API (``GET``) and CloudEvents (``POST /``), over HTTP.

Everything the pages show is what register answers, and every write is a register event, so a
refused form shows register's own field-by-field messages. An error answer becomes a
``KmlError`` with register's status and message (``ValidationFailed`` keeps its ``problems``);
register not answering is ``Unavailable``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from kafkaml import events
from kafkaml.errors import KmlError, NotFound, Unavailable, ValidationFailed
from kafkaml.parsing import loads
from kafkaml.settings import Settings

SOURCE = "/kml/dashboard"
"""The ``source`` of the events the dashboard sends."""


class RegisterAPI:
    """One register function at ``url``."""

    def __init__(self, url: str, timeout_s: float = 300.0, token: str = "") -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        # The dashboard's own token (scopes read and write): register checks every call.
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}

    @classmethod
    def from_settings(cls, settings: Settings) -> RegisterAPI:
        return cls(settings.register_address, token=settings.auth_token)

    def get(self, *segments: str) -> Any:
        """``GET /<segments...>`` of the read API, each segment escaped (``get("runs", id)``)."""
        path = "/".join(urllib.parse.quote(s, safe="") for s in segments)
        request = urllib.request.Request(f"{self.url}/{path}", headers=self._auth, method="GET")
        return self._call(request)

    def find(self, *segments: str) -> Any | None:
        """Like :meth:`get`, but None when register says 404."""
        try:
            return self.get(*segments)
        except NotFound:
            return None

    def send(self, type_: str, data: dict[str, Any]) -> dict[str, Any]:
        """POST one CloudEvent (binary mode); the record of the answering event."""
        headers, body = events.to_http(events.new_event(type_, SOURCE, data))
        request = urllib.request.Request(
            f"{self.url}/", data=body, headers={**headers, **self._auth}, method="POST"
        )
        return self._call(request)

    def _call(self, request: urllib.request.Request) -> Any:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as r:
                return loads(r.read())
        except urllib.error.HTTPError as e:
            raise answer_error(e.code, e.read()) from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise Unavailable(
                f"the register function at {self.url} does not answer ({type(e).__name__})",
                register=self.url,
            ) from None


def answer_error(status: int, body: bytes) -> KmlError:
    """The error register answered: its message, its status, its problems when it lists them."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        parsed = None
    if not isinstance(parsed, dict):
        parsed = {"error": body[:300].decode("utf-8", errors="replace") or f"HTTP {status}"}
    message = str(parsed.get("error") or f"HTTP {status}")
    if status == 422:
        return ValidationFailed(message, [str(p) for p in parsed.get("problems") or []])
    if status == 404:
        return NotFound(message)
    return KmlError(message, status=status)
