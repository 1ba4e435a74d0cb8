"""Multipart uploads with boto3: create, upload part, upload part copy, list parts,
list uploads, complete (multipart ETag), abort, and the errors S3 gives."""

from __future__ import annotations

import hashlib
import os

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

MiB = 1024 * 1024


def _code(error: pytest.ExceptionInfo[ClientError]) -> str:
    return str(error.value.response["Error"]["Code"])


def test_multipart_upload_round_trip(s3, bucket) -> None:  # type: ignore[no-untyped-def]
    parts_data = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(1000)]
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp", ContentType="video/mp4",
                                        Metadata={"k": "v"})
    upload_id = upload["UploadId"]
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"]] == \
        [upload_id]
    etags = []
    for number, data in enumerate(parts_data, 1):
        part = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload_id, PartNumber=number,
                              Body=data)
        assert part["ETag"] == '"' + hashlib.md5(data).hexdigest() + '"'
        etags.append(part["ETag"])
    listed = s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload_id)
    assert [p["PartNumber"] for p in listed["Parts"]] == [1, 2, 3]
    assert [p["Size"] for p in listed["Parts"]] == [len(d) for d in parts_data]
    done = s3.complete_multipart_upload(
        Bucket=bucket, Key="mp", UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e}
                                   for n, e in enumerate(etags, 1)]})
    expected = hashlib.md5(b"".join(hashlib.md5(d).digest() for d in parts_data)).hexdigest()
    assert done["ETag"] == f'"{expected}-3"'
    got = s3.get_object(Bucket=bucket, Key="mp")
    assert got["Body"].read() == b"".join(parts_data)
    assert got["ETag"] == done["ETag"]
    assert got["ContentType"] == "video/mp4" and got["Metadata"] == {"k": "v"}
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_transfer_manager_multipart(s3, bucket, tmp_path) -> None:  # type: ignore[no-untyped-def]
    source = tmp_path / "big.bin"
    data = os.urandom(12 * MiB)
    source.write_bytes(data)
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    s3.upload_file(str(source), bucket, "tm", Config=config)
    target = tmp_path / "back.bin"
    s3.download_file(bucket, "tm", str(target), Config=config)
    assert target.read_bytes() == data
    assert s3.head_object(Bucket=bucket, Key="tm")["ETag"].endswith('-3"')


def test_upload_part_copy(s3, bucket) -> None:  # type: ignore[no-untyped-def]
    source = os.urandom(6 * MiB)
    s3.put_object(Bucket=bucket, Key="src", Body=source)
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="dst")["UploadId"]
    first = s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=upload_id, PartNumber=1,
                                CopySource={"Bucket": bucket, "Key": "src"},
                                CopySourceRange=f"bytes=0-{5 * MiB - 1}")
    second = s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=upload_id, PartNumber=2,
                                 CopySource={"Bucket": bucket, "Key": "src"},
                                 CopySourceRange=f"bytes={5 * MiB}-{6 * MiB - 1}")
    s3.complete_multipart_upload(Bucket=bucket, Key="dst", UploadId=upload_id, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": first["CopyPartResult"]["ETag"]},
                  {"PartNumber": 2, "ETag": second["CopyPartResult"]["ETag"]}]})
    assert s3.get_object(Bucket=bucket, Key="dst")["Body"].read() == source


def test_multipart_errors(s3, bucket) -> None:  # type: ignore[no-untyped-def]
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="e")["UploadId"]
    small = s3.upload_part(Bucket=bucket, Key="e", UploadId=upload_id, PartNumber=1, Body=b"x")
    last = s3.upload_part(Bucket=bucket, Key="e", UploadId=upload_id, PartNumber=2, Body=b"y")
    with pytest.raises(ClientError) as error:  # every part but the last must be >= 5 MiB
        s3.complete_multipart_upload(Bucket=bucket, Key="e", UploadId=upload_id,
                                     MultipartUpload={"Parts": [
                                         {"PartNumber": 1, "ETag": small["ETag"]},
                                         {"PartNumber": 2, "ETag": last["ETag"]}]})
    assert _code(error) == "EntityTooSmall"
    with pytest.raises(ClientError) as error:
        s3.complete_multipart_upload(Bucket=bucket, Key="e", UploadId=upload_id,
                                     MultipartUpload={"Parts": [
                                         {"PartNumber": 2, "ETag": last["ETag"]},
                                         {"PartNumber": 1, "ETag": small["ETag"]}]})
    assert _code(error) == "InvalidPartOrder"
    with pytest.raises(ClientError) as error:
        s3.complete_multipart_upload(Bucket=bucket, Key="e", UploadId=upload_id,
                                     MultipartUpload={"Parts": [
                                         {"PartNumber": 1, "ETag": '"' + "0" * 32 + '"'}]})
    assert _code(error) == "InvalidPart"
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="e")  # nothing became visible
    s3.abort_multipart_upload(Bucket=bucket, Key="e", UploadId=upload_id)
    with pytest.raises(ClientError) as error:
        s3.list_parts(Bucket=bucket, Key="e", UploadId=upload_id)
    assert _code(error) == "NoSuchUpload"
    with pytest.raises(ClientError) as error:
        s3.upload_part(Bucket=bucket, Key="e", UploadId="0" * 32, PartNumber=1, Body=b"x")
    assert _code(error) == "NoSuchUpload"
