"""An object store over boto3: conditional creates and updates, typed errors, presigned URLs.

Endpoint, bucket and credentials are passed in; nothing here reads the environment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, BinaryIO

from botocore.exceptions import BotoCoreError, ClientError

from kafkaml.errors import Conflict, KmlError, NotFound, Unavailable


class PreconditionFailed(Conflict):
    """A conditional write lost: the object exists (create) or changed (update)."""

    kind = "precondition_failed"


@dataclass(frozen=True)
class StoredObject:
    key: str
    body: bytes
    etag: str

    def json(self) -> Any:
        return json.loads(self.body)


_MISSING = {"NoSuchKey", "404", "NotFound"}
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


class ObjectStore:
    """One bucket of an S3-compatible endpoint."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        access_key: str,
        secret_key: str,
        region: str = "us-east-1",
        timeout_s: float = 10.0,
    ) -> None:
        import boto3  # here, not at import: read-only start paths use storage.signed instead
        from botocore.config import Config

        self.endpoint = endpoint
        self.bucket = bucket
        self._client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                connect_timeout=timeout_s,
                read_timeout=timeout_s * 3,
                retries={"max_attempts": 2, "mode": "standard"},
                max_pool_connections=32,
            ),
        )

    @classmethod
    def from_settings(cls, settings) -> ObjectStore:
        return cls(
            settings.s3_endpoint,
            settings.bucket,
            settings.s3_access_key,
            settings.s3_secret_key,
            settings.s3_region,
        )

    @property
    def client(self):
        return self._client

    # -- bucket -------------------------------------------------------------------------------
    def ensure_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as e:
            if _code(e) not in _MISSING and _code(e) != "NoSuchBucket":
                raise _translate(e, self.bucket) from None
        except BotoCoreError as e:
            raise _unavailable(e) from None
        try:
            self._client.create_bucket(Bucket=self.bucket)
        except ClientError as e:
            if _code(e) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise _translate(e, self.bucket) from None
        except BotoCoreError as e:
            raise _unavailable(e) from None

    def ping(self) -> None:
        """Raise ``Unavailable`` unless the bucket answers."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as e:
            raise Unavailable(f"storage at {self.endpoint} does not answer: {_reason(e)}") from None

    # -- objects ------------------------------------------------------------------------------
    def put(
        self,
        key: str,
        body: bytes,
        *,
        content_type: str = "application/octet-stream",
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> str:
        """Write ``key``: with ``if_none_match`` only if absent, ``if_match`` only if unchanged.

        Returns the new ETag; a lost condition raises ``PreconditionFailed``.
        """
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": body,
            "ContentType": content_type,
        }
        if if_none_match:
            args["IfNoneMatch"] = "*"
        if if_match is not None:
            args["IfMatch"] = if_match
        return self._call(key, lambda: self._client.put_object(**args))["ETag"]

    def put_json(self, key: str, value: Any, **conditions: Any) -> str:
        body = json.dumps(value, indent=1, sort_keys=True).encode()
        return self.put(key, body, content_type="application/json", **conditions)

    def get(self, key: str) -> StoredObject:
        r = self._call(key, lambda: self._client.get_object(Bucket=self.bucket, Key=key))
        return StoredObject(key, r["Body"].read(), r["ETag"])

    def get_json(self, key: str) -> tuple[Any, str]:
        obj = self.get(key)
        return obj.json(), obj.etag

    def exists(self, key: str) -> bool:
        try:
            self._call(key, lambda: self._client.head_object(Bucket=self.bucket, Key=key))
        except NotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        self._call(key, lambda: self._client.delete_object(Bucket=self.bucket, Key=key))

    def list(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix``, in key order."""
        keys: list[str] = []
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        try:
            for page in pages:
                keys.extend(o["Key"] for o in page.get("Contents", []))
        except (ClientError, BotoCoreError) as e:
            raise _translate(e, prefix) from None
        return keys

    def list_dirs(self, prefix: str) -> list[str]:
        """The immediate 'folders' below ``prefix`` (which ends with '/')."""
        names: list[str] = []
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, Delimiter="/"
        )
        try:
            for page in pages:
                names.extend(
                    p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", [])
                )
        except (ClientError, BotoCoreError) as e:
            raise _translate(e, prefix) from None
        return names

    def upload_file(self, key: str, fileobj: BinaryIO, *, part_size: int = 8 * 1024 * 1024) -> None:
        """Stream a large file; above ``part_size`` it goes as a multipart upload."""
        from boto3.s3.transfer import TransferConfig

        cfg = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size)
        self._call(key, lambda: self._client.upload_fileobj(fileobj, self.bucket, key, Config=cfg))

    def download_file(self, key: str, path: str) -> None:
        self._call(key, lambda: self._client.download_file(self.bucket, key, path))

    def presigned_get(self, key: str, expires_s: int = 3600) -> str:
        return self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
        )

    def _call(self, key: str, fn):
        try:
            return fn()
        except ClientError as e:
            raise _translate(e, key) from None
        except BotoCoreError as e:
            raise _unavailable(e) from None


def _code(e: ClientError) -> str:
    err = e.response.get("Error", {})
    return str(err.get("Code") or e.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))


def _reason(e: Exception) -> str:
    if isinstance(e, ClientError):
        return _code(e)
    return type(e).__name__


def _unavailable(e: BotoCoreError) -> Unavailable:
    return Unavailable(f"storage unreachable: {type(e).__name__}")


def _translate(e: Exception, key: str) -> KmlError:
    if isinstance(e, BotoCoreError):
        return _unavailable(e)
    code = _code(e)
    if code in _MISSING:
        return NotFound(f"no object {key!r}", key=key)
    if code in _PRECONDITION:
        return PreconditionFailed(f"conditional write on {key!r} lost: {code}", key=key)
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500)
    if status >= 500 or code in {"SlowDown", "ServiceUnavailable", "RequestTimeout"}:
        return Unavailable(f"storage error on {key!r}: {code}", key=key)
    return KmlError(f"storage refused {key!r}: {code}", status=502, key=key)
