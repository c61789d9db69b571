"""Who may call what: bearer tokens with scopes, stored hashed, checked by every function.

A token is an opaque random string (``kml_...``). The functions never hold one in clear: they
read a table of SHA-256 digests, ``{"<sha256 hex>": {"name": ..., "scopes": [...]}}``, from
``auth_tokens_file`` (on a cluster the Secret ``kml-tokens`` mounted as a file; locally
``<state_dir>/auth/tokens.json``, written by ``kml dev up``). The file is read again when it
changes, so a rotated Secret takes effect without a restart.

Scopes: ``read`` (the read API, the dashboard's pages), ``write`` (register's events, training
requests), ``predict`` (inference requests) and ``deliver`` (the data plane: KafkaSource
deliveries, which may carry any CloudEvent type to ``POST /``). A request without a known token
is 401, a token without the scope a route needs is 403; the health probes and ``/metrics`` are
open. How a KafkaSource delivery proves itself is ``auth_data_plane``: a ``deliver`` token (the
local bridge), the network path alone (the NetworkPolicy admits only Knative's namespaces), or
Knative Eventing's OIDC token, a JWT verified by :mod:`kafkaml.oidc`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kafkaml.errors import Forbidden, Unauthorized
from kafkaml.settings import Settings

READ, WRITE, PREDICT, DELIVER = "read", "write", "predict", "deliver"
SCOPES = (READ, WRITE, PREDICT, DELIVER)
"""Every scope a token may hold."""
OPEN = "open"
"""Marks a route anyone may call (the health probes, ``/metrics``, the login page)."""
DATA_PLANE_MODES = ("token", "network", "oidc")
"""How ``POST /`` deliveries from KafkaSource are admitted (``auth_data_plane``)."""
TOKEN_PREFIX = "kml_"
COOKIE = "kml_token"
"""The dashboard's session cookie: the token itself, HttpOnly and SameSite=Strict."""
RELOAD_EVERY_S = 1.0
"""How often the tokens file's modification stamp is looked at."""

View = TypeVar("View", bound=Callable[..., Any])


def hash_token(token: str) -> str:
    """The SHA-256 hex digest stored for ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def requires(*scopes: str) -> Callable[[View], View]:
    """Mark a Flask view: a token holding any of ``scopes`` may call it (``OPEN``: anyone)."""
    unknown = [s for s in scopes if s not in SCOPES and s != OPEN]
    if unknown or not scopes:
        raise ValueError(f"unknown scopes {unknown}: use {', '.join(SCOPES)} or OPEN")

    def mark(view: View) -> View:
        view.kml_scopes = tuple(scopes)  # type: ignore[attr-defined]
        return view

    return mark


def scopes_of(view: Any, method: str) -> tuple[str, ...]:
    """The scopes a view asks for: its ``requires`` mark, else ``read`` for GET, else ``write``."""
    marked = getattr(view, "kml_scopes", None)
    if marked:
        return marked
    return (READ,) if method in ("GET", "HEAD", "OPTIONS") else (WRITE,)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's name and scopes, or the data plane."""

    name: str
    scopes: frozenset[str]
    data_plane: bool = False

    def allows(self, needed: Iterable[str]) -> bool:
        return any(s in self.scopes for s in needed)

    def require(self, needed: tuple[str, ...], what: str) -> None:
        """403 naming what was asked and which scope it needs."""
        if not self.allows(needed):
            raise Forbidden(
                f"token {self.name!r} may not {what}: it needs the scope {' or '.join(needed)}",
                needed=list(needed),
                token=self.name,
            )


DATA_PLANE = Principal("data-plane", frozenset({DELIVER}), data_plane=True)
"""A KafkaSource delivery: may post any CloudEvent type to ``POST /``."""


def table_problems(table: Any) -> list[str]:
    """Every problem of a tokens table, each naming its entry."""
    if not isinstance(table, dict):
        return ["the tokens table must be a JSON object of sha256 digest -> token entry"]
    problems = []
    for digest, entry in table.items():
        if not (isinstance(digest, str) and len(digest) == 64 and _is_hex(digest)):
            problems.append(f"{str(digest)[:16]!r}: keys are sha256 hex digests, never tokens")
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            problems.append(f"{digest[:12]}: needs a string name")
            continue
        scopes = entry.get("scopes")
        if not isinstance(scopes, list) or any(s not in SCOPES for s in scopes):
            problems.append(
                f"{entry['name']}: scopes must be a list of {', '.join(SCOPES)} (got {scopes!r})"
            )
    return problems


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


class TokenTable:
    """The hashed tokens a function admits, read from ``path`` and re-read when it changes.

    An empty path admits no token at all. A file that cannot be read or does not parse at
    start fails the start (naming the file); one broken later keeps the last good table and
    says so in the log.
    """

    def __init__(self, path: str = "", entries: Mapping[str, Mapping[str, Any]] | None = None):
        self.path = path
        self._entries: dict[str, Principal] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._known: dict[str, Principal] = {}
        self._known_for: dict[str, Principal] | None = None
        if entries is not None:
            self._entries = self._parse(dict(entries))
        elif path:
            self._load(strict=True)

    def _parse(self, table: Any) -> dict[str, Principal]:
        problems = table_problems(table)
        if problems:
            where = self.path or "the tokens table"
            raise ValueError(f"{where}: {'; '.join(problems)}")
        return {
            d: Principal(e["name"], frozenset(e["scopes"])) for d, e in table.items() if e["scopes"]
        }

    def _load(self, strict: bool) -> None:
        try:
            stat = os.stat(self.path)
            stamp = (stat.st_mtime_ns, stat.st_ino)
            if stamp == self._stamp:
                return
            entries = self._parse(json.loads(Path(self.path).read_text()))
        except (OSError, ValueError) as e:
            if strict:
                raise ValueError(
                    f"KML_AUTH_TOKENS_FILE={self.path}: cannot read the tokens table "
                    f"({type(e).__name__}: {e})"
                ) from None
            import logging

            logging.getLogger("kml").error(
                "tokens table not reloaded; the last good one stays",
                extra={"fields": {"path": self.path, "reason": type(e).__name__}},
            )
            self._stamp = None
            return
        self._entries, self._stamp = entries, stamp

    def _fresh(self) -> dict[str, Principal]:
        if self.path:
            now = time.monotonic()
            if now - self._checked < RELOAD_EVERY_S:  # the common case: no lock to take
                return self._entries
            with self._lock:
                if now - self._checked >= RELOAD_EVERY_S:
                    self._checked = now
                    self._load(strict=False)
        return self._entries

    def __len__(self) -> int:
        return len(self._fresh())

    def lookup(self, token: str) -> Principal | None:
        """The token's principal; every stored digest is compared in constant time. Tokens
        found are remembered per token string for as long as the table is the same (a reload
        forgets them, so a revoked token is refused once the file is re-read): hashing and
        comparing every digest on each request cost more than answering it."""
        entries = self._fresh()
        if self._known_for is not entries:
            self._known, self._known_for = {}, entries
        known = self._known.get(token)
        if known is not None:
            return known
        found = self._lookup(token)
        if found is not None and len(self._known) < 4096:
            self._known[token] = found
        return found

    def _lookup(self, token: str) -> Principal | None:
        digest = hash_token(token)
        found = None
        for stored, principal in self._fresh().items():
            if hmac.compare_digest(stored, digest):
                found = principal
        return found


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None when absent)."""
    if not header:
        return None
    kind, _, value = header.strip().partition(" ")
    if kind.lower() != "bearer" or not value.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    return value.strip()


def looks_like_jwt(token: str) -> bool:
    """Knative's OIDC sender tokens are JWTs (three dot-separated parts); ours never are."""
    return token.count(".") == 2 and not token.startswith(TOKEN_PREFIX)


# -- the tokens file the operator or the local stack keeps ---------------------------------------


def read_table(path: Path) -> dict[str, Any]:
    """The tokens table at ``path`` ({} when there is none yet)."""
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    problems = table_problems(table)
    if problems:
        raise ValueError(f"{path}: {'; '.join(problems)}")
    return table


def add_token(path: Path, name: str, scopes: Iterable[str]) -> str:
    """Add a new token named ``name`` to the table at ``path`` and return it (the only time
    it exists in clear). The file is written whole, private to its owner, then renamed."""
    scopes = list(dict.fromkeys(scopes))
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise ValueError(f"scopes {bad or scopes!r}: each must be one of {', '.join(SCOPES)}")
    table = read_table(path)
    token = new_token()
    table[hash_token(token)] = {"name": name, "scopes": scopes}
    write_private(path, json.dumps(table, indent=1, sort_keys=True) + "\n")
    return token


def remove_tokens(path: Path, name: str) -> int:
    """Drop every token named ``name``; how many were dropped."""
    table = read_table(path)
    kept = {d: e for d, e in table.items() if e["name"] != name}
    if len(kept) != len(table):
        write_private(path, json.dumps(kept, indent=1, sort_keys=True) + "\n")
    return len(table) - len(kept)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# -- what a function checks on each request ------------------------------------------------------


class Access:
    """One function's gate: its tokens table, and how it admits the data plane."""

    def __init__(
        self,
        tokens: TokenTable,
        data_plane: str = "token",
        verify_jwt: Callable[[str], Principal] | None = None,
        enabled: bool = True,
    ) -> None:
        if data_plane not in DATA_PLANE_MODES:
            raise ValueError(
                f"KML_AUTH_DATA_PLANE={data_plane!r} must be one of {', '.join(DATA_PLANE_MODES)}"
            )
        if data_plane == "oidc" and verify_jwt is None:
            raise ValueError("KML_AUTH_DATA_PLANE=oidc needs a verifier of the sender tokens")
        self.tokens = tokens
        self.data_plane = data_plane
        self.verify_jwt = verify_jwt
        self.enabled = enabled

    @classmethod
    def from_settings(cls, settings: Settings) -> Access:
        """The gate the settings describe; a wrong setting fails the start, naming it."""
        if settings.auth not in ("on", "off"):
            raise ValueError(f"KML_AUTH={settings.auth!r} must be on or off")
        verify = None
        if settings.auth_data_plane == "oidc":
            from kafkaml.oidc import SenderTokens

            verify = SenderTokens.from_settings(settings).principal
        return cls(
            TokenTable(settings.auth_tokens_file),
            settings.auth_data_plane,
            verify,
            enabled=settings.auth == "on",
        )

    def authenticate(self, token: str | None, event_post: bool) -> Principal:
        """Who sent a request carrying ``token`` (None: no Authorization header); 401 if nobody
        known. ``event_post``: the request is ``POST /``, where the data plane delivers."""
        if token is None:
            if event_post and self.data_plane == "network":
                return DATA_PLANE  # the NetworkPolicy admitted the sender
            if event_post and self.data_plane == "oidc":
                raise Unauthorized(
                    "a KafkaSource delivery carries Knative Eventing's OIDC token; "
                    "a direct call carries 'Authorization: Bearer <token>'"
                )
            raise Unauthorized(
                "this call needs 'Authorization: Bearer <token>' (kml tokens create makes one)"
            )
        if event_post and self.verify_jwt is not None and looks_like_jwt(token):
            return self.verify_jwt(token)
        principal = self.tokens.lookup(token)
        if principal is None:
            raise Unauthorized("unknown or revoked token")
        return principal
