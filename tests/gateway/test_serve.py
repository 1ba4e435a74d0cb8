"""`petrel serve` as an operator runs it: config file, environment, generated and
file-based credentials, auth errors, presigned URLs, anonymous and public-read access,
health and metrics, in-flight and body-stall limits, graceful SIGTERM."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from unittest import mock

import pytest
from botocore.exceptions import ClientError
from conftest import make_client, start_gateway, stop_gateway
from rawhttp import ACCESS_KEY, SECRET_KEY, object_path, sign


def _code(error: pytest.ExceptionInfo[ClientError]) -> str:
    return str(error.value.response["Error"]["Code"])


# ----- auth --------------------------------------------------------------------------
def test_wrong_secret_and_unknown_key(gateway) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ClientError) as error:
        make_client(gateway.endpoint, secret_key="wrong-secret").list_buckets()
    assert _code(error) == "SignatureDoesNotMatch"
    with pytest.raises(ClientError) as error:
        make_client(gateway.endpoint, access_key="PKUNKNOWN").list_buckets()
    assert _code(error) == "InvalidAccessKeyId"


def test_clock_skew(gateway) -> None:  # type: ignore[no-untyped-def]
    skewed = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=20)
    with mock.patch("botocore.auth.get_current_datetime", return_value=skewed), \
            pytest.raises(ClientError) as error:
        make_client(gateway.endpoint).list_buckets()
    assert _code(error) == "RequestTimeTooSkewed"


def test_presigned_urls(gateway, s3, bucket) -> None:  # type: ignore[no-untyped-def]
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "p"},
                                        ExpiresIn=60)
    request = urllib.request.Request(put_url, data=b"presigned body", method="PUT")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    get_url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "p"},
                                        ExpiresIn=60)
    with urllib.request.urlopen(get_url, timeout=10) as response:
        assert response.read() == b"presigned body"
    tampered = get_url.replace("Key=p", "Key=q") if "Key=p" in get_url else \
        get_url.replace(f"/{bucket}/p", f"/{bucket}/q")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(tampered, timeout=10)
    assert error.value.code == 403
    expired = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "p"},
                                        ExpiresIn=1)
    time.sleep(2.1)
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(expired, timeout=10)
    assert error.value.code == 403
    assert b"AccessDenied" in error.value.read()


def test_signature_v2_refused_clearly(gateway, bucket) -> None:  # type: ignore[no-untyped-def]
    v2 = make_client(gateway.endpoint, signature_version="s3")
    with pytest.raises(ClientError) as error:
        v2.list_objects(Bucket=bucket)
    assert _code(error) == "InvalidRequest"
    assert "AWS4-HMAC-SHA256" in error.value.response["Error"]["Message"]


def test_anonymous_refused(gateway, s3, bucket) -> None:  # type: ignore[no-untyped-def]
    s3.put_object(Bucket=bucket, Key="secret", Body=b"x")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"{gateway.endpoint}/{bucket}/secret", timeout=10)
    assert error.value.code == 403 and b"AccessDenied" in error.value.read()
    request = urllib.request.Request(f"{gateway.endpoint}/{bucket}/new", data=b"x",
                                     method="PUT")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=10)
    assert error.value.code == 403


# ----- probes --------------------------------------------------------------------------
def test_healthz_and_metrics(gateway, s3, bucket) -> None:  # type: ignore[no-untyped-def]
    with urllib.request.urlopen(f"{gateway.endpoint}/healthz", timeout=10) as response:
        assert response.read() == b"ok\n"
    s3.put_object(Bucket=bucket, Key="m", Body=b"12345")
    s3.get_object(Bucket=bucket, Key="m")["Body"].read()
    with urllib.request.urlopen(f"{gateway.endpoint}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'petrel_requests_total{operation="put_object",status="200"}' in text
    assert 'petrel_request_seconds_bucket{le="0.005",operation="get_object"}' in text
    assert "petrel_bytes_received_total" in text and "petrel_objects " in text
    assert "petrel_dead_bytes" in text


# ----- a dedicated gateway per lifecycle test -------------------------------------------
def _write_config(path: str, text: str) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def test_generated_credentials_and_public_read(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = _write_config(str(tmp_path / "p.toml"),
                           '[auth]\npublic_read_buckets = ["open"]\n')
    data = str(tmp_path / "data")
    gateway = start_gateway(data, "--config", config)
    try:
        with open(os.path.join(data, "credentials"), encoding="utf-8") as handle:
            pair = handle.read().splitlines()[-1]
        access, secret = pair.split(":")
        deadline = time.monotonic() + 5
        while access not in gateway.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert access in gateway.log() and secret in gateway.log()  # printed once
        client = make_client(gateway.endpoint, access, secret)
        client.create_bucket(Bucket="open")
        client.put_object(Bucket="open", Key="pub", Body=b"public")
        with urllib.request.urlopen(f"{gateway.endpoint}/open/pub", timeout=10) as response:
            assert response.read() == b"public"
    finally:
        assert stop_gateway(gateway) == 0
    # Restarted: the same stored pair, not printed again.
    gateway = start_gateway(data, "--config", config)
    try:
        assert make_client(gateway.endpoint, access, secret).list_buckets()["Buckets"]
        time.sleep(0.3)
        assert secret not in gateway.log()
    finally:
        assert stop_gateway(gateway) == 0


def test_credentials_file_with_two_pairs_and_env(tmp_path) -> None:  # type: ignore[no-untyped-def]
    creds = tmp_path / "creds"
    creds.write_text("# rotation\nPKOLDKEY0001:old-secret-aaaaaaaaaaaaaaaa\n"
                     "PKNEWKEY0002:new-secret-bbbbbbbbbbbbbbbb\n")
    gateway = start_gateway(str(tmp_path / "data"), "--credentials-file", str(creds),
                            env={"PETREL_REGION": "eu-central-1"})
    try:
        for access, secret in (("PKOLDKEY0001", "old-secret-aaaaaaaaaaaaaaaa"),
                               ("PKNEWKEY0002", "new-secret-bbbbbbbbbbbbbbbb")):
            make_client(gateway.endpoint, access, secret).list_buckets()
        client = make_client(gateway.endpoint, "PKNEWKEY0002", "new-secret-bbbbbbbbbbbbbbbb")
        client.create_bucket(Bucket="regional")
        assert client.get_bucket_location(Bucket="regional")["LocationConstraint"] == \
            "eu-central-1"
    finally:
        assert stop_gateway(gateway) == 0


@pytest.mark.parametrize("text,needle", [
    ("[store]\nbogus = 1\n", "unknown key store.bogus"),
    ("[nope]\nx = 1\n", "unknown section [nope]"),
    ("[server]\nport = \"many\"\n", "server.port must be a number"),
    ("[store]\ndurability = \"sometimes\"\n", "store.durability"),
    ("[store]\nsegment_bytes_max = 10\n", "segment_bytes_max"),
    ("[server]\nprocesses = -1\n", "server.processes must be >= 0"),
    ("[server]\nprocesses = 2\nfast_lane = false\n", "server.processes > 1 needs"),
    ("[server]\nmemory_trim_interval_s = -1\n", "server.memory_trim_interval_s must be >= 0"),
])
def test_bad_config_fails_at_start(tmp_path, text, needle) -> None:  # type: ignore[no-untyped-def]
    config = _write_config(str(tmp_path / "bad.toml"), text)
    result = subprocess.run(
        [sys.executable, "-m", "petrel", "serve", "--data", str(tmp_path / "d"), "--config",
         config], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert needle in result.stderr


def _hold_open_upload(port: int, bucket: str, key: str) -> socket.socket:
    """A PUT whose body never finishes: it occupies one in-flight slot."""
    url = f"http://127.0.0.1:{port}{object_path(bucket, key)}"
    headers = sign("PUT", url, ACCESS_KEY, SECRET_KEY, {"Content-Length": "100000"},
                   "UNSIGNED-PAYLOAD")
    head = [f"PUT {object_path(bucket, key)} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    head += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "host"]
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + b"x" * 10)
    return sock


def test_inflight_limit_and_stalled_body(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = _write_config(str(tmp_path / "l.toml"),
                           "[server]\ninflight_requests_max = 2\nbody_idle_timeout_s = 1.5\n")
    gateway = start_gateway(str(tmp_path / "data"), "--config", config, "--access-key",
                            ACCESS_KEY, "--secret-key", SECRET_KEY)
    try:
        client = make_client(gateway.endpoint)
        client.create_bucket(Bucket="lim")
        held = [_hold_open_upload(gateway.port, "lim", f"h{i}") for i in range(2)]
        time.sleep(0.3)
        with pytest.raises(ClientError) as error:
            client.list_objects_v2(Bucket="lim")
        assert _code(error) == "SlowDown"
        # The stalled bodies time out and free their slots; nothing was stored.
        for sock in held:
            response = sock.recv(65536)
            assert b" 400 " in response.split(b"\r\n")[0] and b"RequestTimeout" in response
            sock.close()
        assert client.list_objects_v2(Bucket="lim")["KeyCount"] == 0
    finally:
        assert stop_gateway(gateway) == 0


def test_sigterm_drains_in_flight_requests(tmp_path) -> None:  # type: ignore[no-untyped-def]
    gateway = start_gateway(str(tmp_path / "data"), "--access-key", ACCESS_KEY,
                            "--secret-key", SECRET_KEY)
    client = make_client(gateway.endpoint)
    client.create_bucket(Bucket="drain")
    body = os.urandom(200_000)
    # An upload in flight when SIGTERM arrives: its body is still being sent.
    url = f"{gateway.endpoint}{object_path('drain', 'late')}"
    headers = sign("PUT", url, ACCESS_KEY, SECRET_KEY, {"Content-Length": str(len(body))},
                   "UNSIGNED-PAYLOAD")
    outcome: dict[str, object] = {}

    def slow_upload() -> None:
        head = [f"PUT {object_path('drain', 'late')} HTTP/1.1", f"Host: 127.0.0.1:{gateway.port}"]
        head += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "host"]
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=20) as sock:
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body[:1000])
            time.sleep(1.0)  # SIGTERM lands now
            sock.sendall(body[1000:])
            outcome["response"] = sock.recv(65536)

    thread = threading.Thread(target=slow_upload)
    thread.start()
    time.sleep(0.4)
    gateway.process.terminate()
    thread.join(30)
    assert gateway.process.wait(30) == 0
    assert b" 200 " in outcome["response"].split(b"\r\n")[0]  # type: ignore[union-attr]
    # Everything acknowledged is there after a restart.
    gateway = start_gateway(gateway.data_dir, "--access-key", ACCESS_KEY, "--secret-key",
                            SECRET_KEY)
    try:
        got = make_client(gateway.endpoint).get_object(Bucket="drain", Key="late")
        assert got["Body"].read() == body
    finally:
        assert stop_gateway(gateway) == 0


def test_virtual_hosted_style(gateway, s3, bucket) -> None:  # type: ignore[no-untyped-def]
    s3.put_object(Bucket=bucket, Key="vh/key", Body=b"virtual")
    url = f"http://{bucket}.localhost:{gateway.port}/vh/key"
    headers = sign("GET", url, ACCESS_KEY, SECRET_KEY, {}, "UNSIGNED-PAYLOAD")
    headers["Host"] = f"{bucket}.localhost:{gateway.port}"
    lines = ["GET /vh/key HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = b""
        while b"virtual" not in response:
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
    assert response.startswith(b"HTTP/1.1 200") and response.endswith(b"virtual")
