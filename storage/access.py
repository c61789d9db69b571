"""What each function may read and write in the bucket: one S3 policy per function.

Every function used to hold the same read-write key, so whoever broke into infer (the one that
runs next to user traffic) could rewrite the registry and the stored manifests. Each function now
gets a key scoped to its prefixes: infer reads what it serves, the dashboard reads, train writes
runs (and the model versions an online stream promotes), register writes the registry. The local
stack creates these users on MinIO (``kml.dev.s3_users``); on a cluster the operator gives each
function's Secret a key with the same policy (``python -m storage.access BUCKET FUNCTION`` prints
it as the IAM/MinIO JSON).
"""

from __future__ import annotations

import json
import sys
from typing import Any

FUNCTIONS = ("register", "train", "infer", "dashboard")

READS: dict[str, tuple[str, ...]] = {
    "register": ("",),
    "train": ("",),
    # the inference spec, the model records, the trained artifacts and the online stream whose
    # promoted model it follows, nothing else
    "infer": ("inference/", "models/", "runs/", "streams/"),
    "dashboard": ("",),
}
"""Key prefixes each function may get (``""``: the whole bucket)."""

WRITES: dict[str, tuple[str, ...]] = {
    "register": (
        "models/",
        "configurations/",
        "deployments/",
        "inference/",
        "events/",
        "streams/",  # kml.stream.stop
    ),
    # runs, their datasource records, online streams and the versions a stream promotes
    "train": ("runs/", "datasources/", "streams/", "models/"),
    "infer": (),
    "dashboard": (),  # its forms write through register's API
}
"""Key prefixes each function may put. Nothing deletes: no function is granted DeleteObject."""


def policy(function: str, bucket: str) -> dict[str, Any]:
    """The S3 policy document (AWS IAM / MinIO) of one function on one bucket."""
    if function not in FUNCTIONS:
        raise ValueError(f"function: {function!r} is none of {', '.join(FUNCTIONS)}")
    # ListBucket on the bucket: head_bucket (readiness) and a 404, not a 403, for a missing key
    statements: list[dict[str, Any]] = [
        {
            "Effect": "Allow",
            "Action": ["s3:GetBucketLocation", "s3:ListBucket"],
            "Resource": [f"arn:aws:s3:::{bucket}"],
        },
        {
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": [f"arn:aws:s3:::{bucket}/{p}*" for p in READS[function]],
        },
    ]
    if WRITES[function]:
        statements.append(
            {
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
                "Resource": [f"arn:aws:s3:::{bucket}/{p}*" for p in WRITES[function]],
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m storage.access BUCKET FUNCTION", file=sys.stderr)
        return 2
    try:
        print(json.dumps(policy(argv[1], argv[0]), indent=2))
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
