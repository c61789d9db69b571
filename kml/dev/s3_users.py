"""The local MinIO's users: one per function, each with its own policy (``storage.access``).

``kml dev up`` starts MinIO with the root user of the settings (``KML_S3_ACCESS_KEY``), which
only the stack's own setup, the CLI and the test session's fixtures use. At start the root user
makes ``kml-<function>`` users with random secret keys, kept in ``<state_dir>/minio/users.json``
(mode 600), attaches each its policy, and every local function is started with its own key
(``function_settings``), as each Service on a cluster reads its own Secret.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from kafkaml.auth import write_private
from kafkaml.settings import Settings
from storage.access import FUNCTIONS, policy


def users_file(state_dir: str) -> Path:
    return Path(state_dir) / "minio" / "users.json"


def user_name(function: str) -> str:
    return f"kml-{function}"


def _admin(settings: Settings):
    from minio import MinioAdmin
    from minio.credentials import StaticProvider

    url = urlsplit(settings.s3_endpoint)
    return MinioAdmin(
        endpoint=url.netloc,
        credentials=StaticProvider(settings.s3_access_key, settings.s3_secret_key),
        region=settings.s3_region,
        secure=url.scheme == "https",
    )


def provision(settings: Settings) -> dict[str, dict[str, str]]:
    """Create (or refresh) the functions' users and policies with the root user of
    ``settings``; their keys stay those already in ``users.json`` when it exists."""
    path = users_file(settings.state_dir)
    try:
        users = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        users = {}
    admin = _admin(settings)
    for function in FUNCTIONS:
        user = users.get(function) or {
            "access_key": user_name(function),
            "secret_key": secrets.token_urlsafe(24),
        }
        users[function] = user
        name = f"kml-{settings.bucket}-{function}"
        admin.policy_add(name, policy=policy(function, settings.bucket))
        admin.user_add(user["access_key"], user["secret_key"])
        admin.policy_set(name, user=user["access_key"])
    write_private(path, json.dumps(users, indent=1) + "\n")
    return users


def function_settings(settings: Settings, function: str) -> Settings:
    """``settings`` with the S3 key of ``function``'s local user; unchanged when the stack made
    none (an S3 of your own: its key is yours to scope)."""
    try:
        user = json.loads(users_file(settings.state_dir).read_text())[function]
    except (FileNotFoundError, ValueError, KeyError):
        return settings
    return settings.replace(s3_access_key=user["access_key"], s3_secret_key=user["secret_key"])
