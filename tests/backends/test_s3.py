"""S3Backend: the backend conformance suite against a real SeaweedFS, plus what only an
S3 store has: multipart uploads, key prefixes, paging, and errors from the store."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.register_assert_rewrite("conformance")

from conformance import BackendConformance, MiB, blob_bytes  # noqa: E402
from weed import BUCKET, backend_config, s3_client  # noqa: E402

from petrel.backends.base import Backend  # noqa: E402
from petrel.backends.s3 import S3Backend  # noqa: E402
from petrel.errors import BackendError, BlobNotFound, InvalidArgument  # noqa: E402
from petrel.settings import S3BackendConfig  # noqa: E402
from petrel.testing.seaweedfs import SeaweedFS  # noqa: E402

# Multipart from 5 MiB on (S3's smallest part), so the suite's 8 MiB blobs take it.
MULTIPART = {"multipart_threshold_bytes": 5 * MiB, "multipart_part_bytes": 5 * MiB}


class TestS3BackendConformance(BackendConformance):
    """The whole suite; every test gets an empty backend under a fresh key prefix."""

    stress_duration_s = 0.3
    reader_threads = 4

    @pytest.fixture(autouse=True)
    def _server(self, weed: SeaweedFS) -> None:
        self.server = weed

    def make_backend(self, tmp_path: Path) -> Backend:
        return S3Backend(backend_config(self.server, **MULTIPART), threads=8)


@pytest.fixture
def config(weed: SeaweedFS) -> S3BackendConfig:
    return backend_config(weed, **MULTIPART)


@pytest.fixture
def backend(config: S3BackendConfig) -> Iterator[S3Backend]:
    made = S3Backend(config, threads=4)
    try:
        yield made
    finally:
        made.close()


def multipart_etag(data: bytes, part_bytes: int) -> str:
    digests = [hashlib.md5(data[i : i + part_bytes]).digest()
               for i in range(0, len(data), part_bytes)]
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def test_multipart_upload_of_a_large_file(backend: S3Backend, config: S3BackendConfig,
                                          weed: SeaweedFS, tmp_path: Path) -> None:
    data = blob_bytes(1, 12 * MiB + 17)
    source = tmp_path / "segment"
    source.write_bytes(data)
    backend.put_file("segments/big.seg", str(source))
    head = s3_client(weed).head_object(Bucket=BUCKET, Key=config.key_prefix + "segments/big.seg")
    # Three parts (5 + 5 + 2 MiB): the store's ETag says it was a multipart upload.
    assert head["ETag"].strip('"') == multipart_etag(data, 5 * MiB)
    assert head["ContentLength"] == len(data)
    assert backend.get_range("segments/big.seg", 5 * MiB - 3, 10) == data[5 * MiB - 3 :][:10]


def test_small_file_is_one_put(backend: S3Backend, config: S3BackendConfig,
                               weed: SeaweedFS, tmp_path: Path) -> None:
    data = blob_bytes(2, 5 * MiB)  # at the threshold: not multipart
    source = tmp_path / "segment"
    source.write_bytes(data)
    backend.put_file("x", str(source))
    head = s3_client(weed).head_object(Bucket=BUCKET, Key=config.key_prefix + "x")
    assert head["ETag"].strip('"') == hashlib.md5(data).hexdigest()


def test_failed_multipart_upload_is_aborted(backend: S3Backend, config: S3BackendConfig,
                                            weed: SeaweedFS, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A part that fails aborts the upload: nothing visible, no upload left open."""
    source = tmp_path / "segment"
    source.write_bytes(blob_bytes(3, 11 * MiB))
    calls = []

    def fail_second_part(key: str, upload_id: str, number: int, body: bytes,
                         digest: bytes) -> str:
        calls.append(number)
        if number == 2:
            raise BackendError("injected: part 2 lost")
        return real(key, upload_id, number, body, digest)

    real = backend._upload_part
    monkeypatch.setattr(backend, "_upload_part", fail_second_part)
    with pytest.raises(BackendError, match="part 2"):
        backend.put_file("x", str(source))
    assert calls == [1, 2]
    assert list(backend.list()) == []
    uploads = s3_client(weed).list_multipart_uploads(Bucket=BUCKET,
                                                     Prefix=config.key_prefix)
    assert uploads.get("Uploads", []) == []


def test_wrong_etag_from_the_store_fails_the_put(backend: S3Backend,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that stored other bytes than were sent (its ETag differs) fails the put."""
    client = backend._client
    real = client.put_object

    def put_then_lie(**kwargs: object) -> dict[str, object]:
        response = dict(real(**kwargs))
        response["ETag"] = '"00000000000000000000000000000000"'
        return response

    monkeypatch.setattr(client, "put_object", put_then_lie)
    with pytest.raises(BackendError, match="ETag"):
        backend.put_bytes("x", b"payload")


def test_prefix_isolates_backends(weed: SeaweedFS) -> None:
    """Two backends on one bucket under different prefixes see only their own blobs;
    the key in the bucket is prefix + name."""
    one = S3Backend(backend_config(weed, prefix="iso/one"))
    two = S3Backend(backend_config(weed, prefix="iso/one-two/"))
    try:
        for name in list(one.list()) + list(two.list()):  # a rerun on a kept server
            one.delete(name)
            two.delete(name)
        one.put_bytes("segments/1", b"one")
        two.put_bytes("segments/1", b"two")
        assert list(one.list()) == ["segments/1"]
        assert list(two.list()) == ["segments/1"]
        assert one.get_range("segments/1", 0, 3) == b"one"
        got = s3_client(weed).get_object(Bucket=BUCKET, Key="iso/one-two/segments/1")
        assert got["Body"].read() == b"two"
    finally:
        one.close()
        two.close()


def test_list_pages_through_many_blobs(backend: S3Backend) -> None:
    names = [f"segments/{i:016x}.seg" for i in range(1100)]  # more than one page
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: backend.put_bytes(name, b""), names[::-1]))
    assert list(backend.list("segments/")) == names


def test_foreign_keys_under_the_prefix_are_not_listed(backend: S3Backend,
                                                      config: S3BackendConfig,
                                                      weed: SeaweedFS) -> None:
    """A directory marker another tool made ("dir/") is not a blob name."""
    s3_client(weed).put_object(Bucket=BUCKET, Key=config.key_prefix + "dir/", Body=b"")
    backend.put_bytes("dir/x", b"x")
    assert list(backend.list()) == ["dir/x"]


def test_missing_bucket_is_a_backend_error(weed: SeaweedFS) -> None:
    config = backend_config(weed)
    missing = S3Backend(S3BackendConfig(
        bucket="no-such-bucket-petrel", endpoint_url=config.endpoint_url, path_style=True,
        access_key=config.access_key, secret_key=config.secret_key))
    try:
        with pytest.raises(BackendError) as raised:
            missing.get_range("x", 0, 1)
        assert not isinstance(raised.value, BlobNotFound)
        assert "NoSuchBucket" in str(raised.value)
    finally:
        missing.close()


def test_wrong_credentials_are_a_backend_error(weed: SeaweedFS) -> None:
    config = backend_config(weed)
    wrong = S3Backend(S3BackendConfig(
        bucket=BUCKET, endpoint_url=config.endpoint_url, path_style=True,
        access_key=config.access_key, secret_key="not-the-secret"))
    try:
        with pytest.raises(BackendError) as raised:
            wrong.put_bytes("x", b"x")
        assert not isinstance(raised.value, (BlobNotFound, InvalidArgument))
    finally:
        wrong.close()


def test_unreachable_store_fails_fast_and_logs_once(caplog: pytest.LogCaptureFixture
                                                    ) -> None:
    """Nothing listens: every call raises BackendError (503) after its bounded retries;
    the outage is logged once, not per call."""
    from petrel.testing.seaweedfs import free_port

    dead = S3Backend(S3BackendConfig(
        bucket=BUCKET, endpoint_url=f"http://127.0.0.1:{free_port()}", path_style=True,
        access_key="a", secret_key="b", request_attempts_max=2, connect_timeout_s=1))
    try:
        with caplog.at_level(logging.ERROR, logger="petrel.backends.s3"):
            for call in (lambda: dead.get_range("x", 0, 1), lambda: dead.size("x"),
                         lambda: dead.put_bytes("x", b"x"), lambda: list(dead.list())):
                with pytest.raises(BackendError) as raised:
                    call()
                assert raised.value.status == 503
                assert not isinstance(raised.value, BlobNotFound)
        errors = [r for r in caplog.records if r.name == "petrel.backends.s3"]
        assert len(errors) == 1
        assert "unavailable" in errors[0].getMessage()
    finally:
        dead.close()


def test_config_from_url() -> None:
    config = S3BackendConfig.from_url("s3://bucket/some/prefix", region="eu-west-1")
    assert (config.bucket, config.key_prefix, config.region) == \
        ("bucket", "some/prefix/", "eu-west-1")
    assert S3BackendConfig.from_url("s3://bucket").key_prefix == ""
    assert S3BackendConfig.from_url("s3://bucket/p/").key_prefix == "p/"
    for bad in ("http://bucket/x", "s3://", "bucket/x", "s3:///x"):
        with pytest.raises(ValueError):
            S3BackendConfig.from_url(bad)
    assert "secret" not in repr(S3BackendConfig("b", access_key="a", secret_key="secret"))


def test_pool_is_sized_to_the_callers(config: S3BackendConfig) -> None:
    made = S3Backend(config, threads=64)
    try:
        assert made._client.meta.config.max_pool_connections == 64
    finally:
        made.close()
