"""ListBuckets, CreateBucket, DeleteBucket, HeadBucket, GetBucketLocation with boto3."""

from __future__ import annotations

import uuid

import pytest
from botocore.exceptions import ClientError


def _code(error: pytest.ExceptionInfo[ClientError]) -> str:
    return str(error.value.response["Error"]["Code"])


def test_bucket_lifecycle(s3) -> None:  # type: ignore[no-untyped-def]
    name = "life-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=name)
    assert name in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.head_bucket(Bucket=name)
    assert s3.get_bucket_location(Bucket=name)["LocationConstraint"] is None
    with pytest.raises(ClientError) as error:
        s3.create_bucket(Bucket=name)
    assert _code(error) == "BucketAlreadyOwnedByYou"
    s3.put_object(Bucket=name, Key="k", Body=b"1")
    with pytest.raises(ClientError) as error:
        s3.delete_bucket(Bucket=name)
    assert _code(error) == "BucketNotEmpty"
    s3.delete_object(Bucket=name, Key="k")
    s3.delete_bucket(Bucket=name)
    with pytest.raises(ClientError) as error:
        s3.head_bucket(Bucket=name)
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as error:
        s3.list_objects_v2(Bucket=name)
    assert _code(error) == "NoSuchBucket"


def test_create_bucket_with_location_constraint(s3) -> None:  # type: ignore[no-untyped-def]
    name = "loc-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.delete_bucket(Bucket=name)


@pytest.mark.parametrize("name", ["UPPER", "ab", "bad_name", "-start"])
def test_invalid_bucket_name(s3, name) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ClientError) as error:
        s3.create_bucket(Bucket=name)
    assert _code(error) == "InvalidBucketName"
    assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_versioning_and_acl_answers(s3, bucket) -> None:  # type: ignore[no-untyped-def]
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket)
    acl = s3.get_bucket_acl(Bucket=bucket)
    assert acl["Grants"][0]["Permission"] == "FULL_CONTROL"
