"""The local stack's tokens: made at ``kml dev up``, used by the CLI, the demo and the bridge.

``<state_dir>/auth/tokens.json`` is the hashed table the local functions admit (what the
Secret ``kml-tokens`` is on a cluster) and ``<state_dir>/auth/admin.token`` the local owner's
token in clear, readable by its owner only. The owner's token holds every scope, ``deliver``
included: the local bridge delivers with it, as Knative's data plane does on a cluster (the
owner of a local stack can write to its plaintext Kafka anyway).
"""

from __future__ import annotations

from pathlib import Path

from kafkaml.auth import SCOPES, TokenTable, add_token, write_private
from kafkaml.settings import Settings

ADMIN = "local-admin"
"""The name of the local owner's token."""


def auth_dir(state_dir: str) -> Path:
    return Path(state_dir) / "auth"


def tokens_file(state_dir: str) -> Path:
    """The local stack's hashed tokens table."""
    return auth_dir(state_dir) / "tokens.json"


def admin_token_file(state_dir: str) -> Path:
    return auth_dir(state_dir) / "admin.token"


def provision(settings: Settings) -> Settings:
    """Make the local tokens once (a table and the owner's token) and return the settings that
    use them: the functions admit the table, the clients send the owner's token."""
    table, admin = tokens_file(settings.state_dir), admin_token_file(settings.state_dir)
    token = admin.read_text().strip() if admin.is_file() else ""
    if not token or not table.is_file() or TokenTable(str(table)).lookup(token) is None:
        token = add_token(table, ADMIN, SCOPES)
        write_private(admin, token + "\n")
    return settings.replace(
        auth_tokens_file=settings.auth_tokens_file or str(table.resolve()),
        auth_token=settings.auth_token or token,
    )


def with_local_tokens(settings: Settings) -> Settings:
    """``settings`` with the local stack's tokens filled in where they exist and are not set."""
    table, admin = tokens_file(settings.state_dir), admin_token_file(settings.state_dir)
    changes = {}
    if not settings.auth_tokens_file and table.is_file():
        changes["auth_tokens_file"] = str(table.resolve())
    if not settings.auth_token and admin.is_file():
        changes["auth_token"] = admin.read_text().strip()
    return settings.replace(**changes) if changes else settings
