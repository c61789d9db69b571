"""HTTP client of the register function: binary-mode CloudEvents in, records out.

Used by the ``kml`` CLI and the demo. Every call carries ``Authorization: Bearer <token>``
(``auth_token``, else the local stack's owner token). An error answer becomes the ``KmlError``
subclass of its status (422 keeps its ``problems``), so callers see what the server said,
never a traceback.
"""

from __future__ import annotations

from typing import Any

import requests

from kafkaml import events
from kafkaml.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    KmlError,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from kafkaml.settings import Settings

SOURCE = "/kml/cli"
_BY_STATUS: dict[int, type[KmlError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    503: Unavailable,
}


def register_url(settings: Settings) -> str:
    return settings.register_url or f"http://127.0.0.1:{settings.register_port}"


class RegisterClient:
    """Talks to one register function at ``url``."""

    def __init__(self, url: str, timeout_s: float = 300.0, token: str = "") -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._http = requests.Session()
        if token:
            self._http.headers["Authorization"] = f"Bearer {token}"

    @classmethod
    def from_settings(cls, settings: Settings) -> RegisterClient:
        return cls(register_url(settings), token=settings.auth_token)

    # -- events -------------------------------------------------------------------------------
    def send(self, type_: str, data: dict[str, Any]) -> dict[str, Any]:
        """POST one CloudEvent (binary mode); the record of the answering event."""
        headers, body = events.to_http(events.new_event(type_, SOURCE, data))
        return self._request("POST", "/", headers=headers, data=body)

    def register_model(self, definition: dict[str, Any]) -> dict[str, Any]:
        """``definition``: name, keras_json (or keras_b64), compile, description?, version?."""
        return self.send(events.MODEL_REGISTER, definition)

    def create_configuration(
        self, name: str, models: list[str], description: str = ""
    ) -> dict[str, Any]:
        return self.send(
            events.CONFIGURATION_CREATE,
            {"name": name, "models": models, "description": description},
        )

    def create_deployment(self, **params: Any) -> dict[str, Any]:
        """``configuration`` or ``models``, and batch_size, epochs, shuffle, seed, id, ..."""
        return self.send(
            events.DEPLOYMENT_CREATE, {k: v for k, v in params.items() if v is not None}
        )

    def create_inference(self, **fields: Any) -> dict[str, Any]:
        """run_id (or stream), input_topic, output_topic and optional fields; the answer holds
        ``manifests``."""
        return self.send(
            events.INFERENCE_CREATE, {k: v for k, v in fields.items() if v is not None}
        )

    # -- reads --------------------------------------------------------------------------------
    def get(self, path: str) -> Any:
        """``GET`` a read route, e.g. ``/models/digits`` or ``/deployments/7``."""
        return self._request("GET", "/" + path.lstrip("/"))

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self._http.request(method, self.url + path, timeout=self.timeout_s, **kwargs)
        except requests.RequestException as e:
            raise Unavailable(
                f"register function at {self.url} does not answer "
                f"({type(e).__name__}); is it running (kml dev up)?"
            ) from None
        try:
            body = r.json()
        except ValueError:
            body = {"error": r.text[:300] or r.reason}
        if r.status_code >= 400:
            raise _error(r.status_code, body)
        return body


def _error(status: int, body: Any) -> KmlError:
    if not isinstance(body, dict):
        body = {"error": str(body)[:300]}
    message = str(body.get("error") or f"HTTP {status}")
    details = {k: v for k, v in body.items() if k not in ("error", "kind", "status", "problems")}
    if status == 422:
        return ValidationFailed(message, list(body.get("problems") or []), **details)
    cls = _BY_STATUS.get(status)
    if cls is not None:
        return cls(message, **details)
    return KmlError(message, status=status, **details)
