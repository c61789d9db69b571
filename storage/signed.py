"""A read-only S3 reader for start-up paths: botocore's SigV4 signer and plain HTTP requests.

Creating a boto3 client loads botocore's S3 service model (about a third of a second); the infer
function's cold start only needs a few signed GETs, so it reads the registry through this.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from kafkaml.errors import KmlError, NotFound, Unavailable
from storage.objects import StoredObject


class SignedReader:
    """``get``, ``get_json``, ``exists`` and ``download_file`` of one bucket, nothing else."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        access_key: str,
        secret_key: str,
        region: str = "us-east-1",
        timeout_s: float = 10.0,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.bucket = bucket
        self._signer = S3SigV4Auth(Credentials(access_key, secret_key), "s3", region)
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s * 3),
            retries=urllib3.Retry(total=2, connect=2, read=1, status=0, backoff_factor=0.2),
        )

    @classmethod
    def from_settings(cls, settings) -> SignedReader:
        return cls(
            settings.s3_endpoint,
            settings.bucket,
            settings.s3_access_key,
            settings.s3_secret_key,
            settings.s3_region,
        )

    def _request(
        self,
        method: str,
        key: str,
        stream: bool = False,
        headers: dict[str, str] | None = None,
    ) -> urllib3.BaseHTTPResponse:
        url = f"{self.endpoint}/{self.bucket}/{quote(key, safe='/')}"
        request = AWSRequest(method=method, url=url, headers=headers or {})
        self._signer.add_auth(request)
        try:
            response = self._http.request(
                method, url, headers=dict(request.headers.items()), preload_content=not stream
            )
        except urllib3.exceptions.HTTPError as e:
            raise Unavailable(f"storage unreachable: {type(e).__name__}") from None
        if response.status == 304:  # a conditional GET whose object has not changed
            return response
        if response.status == 404:
            raise NotFound(f"no object {key!r}", key=key)
        if response.status >= 500:
            raise Unavailable(f"storage error on {key!r}: HTTP {response.status}", key=key)
        if response.status >= 300:
            raise KmlError(f"storage refused {key!r}: HTTP {response.status}", status=502, key=key)
        return response

    def get(self, key: str) -> StoredObject:
        r = self._request("GET", key)
        return StoredObject(key, r.data, r.headers.get("ETag", ""))

    def get_if_changed(self, key: str, etag: str) -> StoredObject | None:
        """The object unless its ETag is still ``etag`` (then None: S3 answered 304 without a
        body), so polling a small record costs one round trip and no transfer."""
        r = self._request("GET", key, headers={"If-None-Match": etag} if etag else None)
        if r.status == 304:
            return None
        return StoredObject(key, r.data, r.headers.get("ETag", ""))

    def get_json(self, key: str) -> tuple[Any, str]:
        obj = self.get(key)
        return json.loads(obj.body), obj.etag

    def exists(self, key: str) -> bool:
        try:
            self._request("HEAD", key)
        except NotFound:
            return False
        return True

    def download_file(self, key: str, path: str) -> None:
        r = self._request("GET", key, stream=True)
        try:
            with open(path, "wb") as out:
                for chunk in r.stream(1024 * 1024):
                    out.write(chunk)
        finally:
            r.release_conn()
