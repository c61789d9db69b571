"""Knative Eventing's OIDC sender tokens, verified: the data plane proving who it is.

With Eventing's ``authentication-oidc`` feature on, a KafkaSource sends each delivery with
``Authorization: Bearer <JWT>``: a Kubernetes service account token of the source, issued by
the cluster's service account issuer, for the sink's audience (``spec.sink.audience``). A
function with ``auth_data_plane=oidc`` accepts a delivery only when that JWT is signed (RS256)
by a key of the issuer's JWKS (``auth_oidc_jwks_file``, the cluster's ``/openid/v1/jwks`` kept
in a ConfigMap, re-read when it changes), names ``auth_oidc_issuer`` and ``auth_oidc_audience``,
is within its validity, and its subject is a service account of the function's namespace.

Verification needs only the public key (RSASSA-PKCS1-v1_5: the signature raised to the public
exponent must be the padded SHA-256 digest), so it is done here without a crypto library.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any

from kafkaml.auth import DELIVER, Principal
from kafkaml.errors import Unauthorized
from kafkaml.settings import Settings

_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
LEEWAY_S = 30
"""Clock difference allowed on ``exp``, ``nbf`` and ``iat``."""


def b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def rs256_valid(signed: bytes, signature: bytes, n: int, e: int) -> bool:
    """True when ``signature`` is an RSASSA-PKCS1-v1_5 SHA-256 signature of ``signed``."""
    size = (n.bit_length() + 7) // 8
    s = int.from_bytes(signature, "big")
    if len(signature) != size or s >= n:
        return False
    digest = _SHA256_DIGEST_INFO + hashlib.sha256(signed).digest()
    if size < len(digest) + 11:
        return False
    expected = b"\x00\x01" + b"\xff" * (size - len(digest) - 3) + b"\x00" + digest
    return hmac.compare_digest(pow(s, e, n).to_bytes(size, "big"), expected)


class SenderTokens:
    """Verifies the data plane's JWTs against one issuer, audience and JWKS."""

    def __init__(self, issuer: str, audience: str, jwks_file: str, namespace: str) -> None:
        missing = [
            f"KML_AUTH_OIDC_{name.upper()}"
            for name, value in (
                ("issuer", issuer),
                ("audience", audience),
                ("jwks_file", jwks_file),
            )
            if not value
        ]
        if missing:
            raise ValueError(f"KML_AUTH_DATA_PLANE=oidc needs {', '.join(missing)}")
        self.issuer, self.audience, self.path = issuer, audience, jwks_file
        self.subject_prefix = f"system:serviceaccount:{namespace}:"
        self._keys: dict[str, tuple[int, int]] = {}
        self._stamp: tuple[int, int] | None = None
        self._load()

    @classmethod
    def from_settings(cls, settings: Settings) -> SenderTokens:
        return cls(
            settings.auth_oidc_issuer,
            settings.auth_oidc_audience,
            settings.auth_oidc_jwks_file,
            settings.namespace,
        )

    def _load(self) -> None:
        stat = os.stat(self.path)
        stamp = (stat.st_mtime_ns, stat.st_ino)
        if stamp == self._stamp:
            return
        keys = {}
        for i, key in enumerate(json.loads(Path(self.path).read_text()).get("keys") or []):
            if key.get("kty") == "RSA" and key.get("n") and key.get("e"):
                n, e = (int.from_bytes(b64url(key[k]), "big") for k in ("n", "e"))
                keys[str(key.get("kid") or i)] = (n, e)
        if not keys:
            raise ValueError(f"KML_AUTH_OIDC_JWKS_FILE={self.path}: no RSA key")
        self._keys, self._stamp = keys, stamp

    def principal(self, token: str) -> Principal:
        """The data plane, when ``token`` is a valid sender token; 401 naming why not."""
        try:
            self._load()
        except (OSError, ValueError):
            pass  # keep the last good keys
        claims = self._verified(token)
        return Principal(str(claims["sub"]), frozenset({DELIVER}), data_plane=True)

    def _verified(self, token: str) -> dict[str, Any]:
        try:
            head, body, sig = token.split(".")
            header = json.loads(b64url(head))
            claims = json.loads(b64url(body))
            signature = b64url(sig)
        except (ValueError, TypeError):
            raise Unauthorized("the sender token is not a JWT") from None
        if not isinstance(header, dict) or header.get("alg") != "RS256":
            raise Unauthorized("the sender token must be signed with RS256")
        kid = header.get("kid")
        keys = [self._keys[kid]] if kid in self._keys else list(self._keys.values())
        signed = f"{head}.{body}".encode()
        if not any(rs256_valid(signed, signature, n, e) for n, e in keys):
            raise Unauthorized("the sender token's signature matches no key of the issuer")
        if not isinstance(claims, dict) or claims.get("iss") != self.issuer:
            raise Unauthorized("the sender token comes from another issuer")
        audiences = claims.get("aud")
        audiences = [audiences] if isinstance(audiences, str) else audiences or []
        if self.audience not in audiences:
            raise Unauthorized("the sender token is for another audience")
        now = time.time()
        if not isinstance(claims.get("exp"), (int, float)) or claims["exp"] < now - LEEWAY_S:
            raise Unauthorized("the sender token has expired")
        for claim in ("nbf", "iat"):
            if isinstance(claims.get(claim), (int, float)) and claims[claim] > now + LEEWAY_S:
                raise Unauthorized(f"the sender token's {claim} is in the future")
        if not str(claims.get("sub", "")).startswith(self.subject_prefix):
            raise Unauthorized(
                "the sender token's subject is not a service account of this namespace"
            )
        return claims
