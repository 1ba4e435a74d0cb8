"""`petrel serve --processes N`: reader processes answer GETs and HEADs beside the
primary, on the same port, and pass everything else to it with the connection. Every
test runs the gateway as users do and talks to it with boto3 or raw HTTP over fresh
connections (the kernel spreads those over the processes)."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
import urllib.request

import pytest
from botocore.exceptions import ClientError
from conftest import make_client, start_gateway, stop_gateway
from rawhttp import ACCESS_KEY, SECRET_KEY

from petrel.testing.gateway import Gateway

READERS = 2
_READER_LINE = re.compile(r"reader (\d+) \(pid (\d+)\) serving")


def _reader_pids(gateway: Gateway) -> dict[int, int]:
    """Reader number -> pid of its latest start, from the gateway's log."""
    return {int(number): int(pid) for number, pid in _READER_LINE.findall(gateway.log())}


def _wait_readers(gateway: Gateway, starts: int = READERS, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(_READER_LINE.findall(gateway.log())) < starts:
        assert time.monotonic() < deadline, gateway.log()
        assert gateway.process.poll() is None, gateway.log()
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _fresh(gateway: Gateway, timeout_s: float = 10.0):  # type: ignore[no-untyped-def]
    """A client with one connection of its own (a new TCP connection: any process)."""
    return make_client(gateway.endpoint, max_pool_connections=1,
                       connect_timeout=timeout_s, read_timeout=timeout_s)


def _metric(gateway: Gateway, name: str, timeout_s: float = 10.0) -> float:
    with urllib.request.urlopen(f"{gateway.endpoint}/metrics", timeout=timeout_s) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def multi(tmp_path):  # type: ignore[no-untyped-def]
    gateway = start_gateway(str(tmp_path / "data"), "--access-key", ACCESS_KEY,
                            "--secret-key", SECRET_KEY, "--processes", str(READERS + 1))
    _wait_readers(gateway)
    yield gateway
    assert stop_gateway(gateway) == 0


def test_every_write_is_read_back_at_once_from_any_process(multi) -> None:  # type: ignore[no-untyped-def]
    """Read-after-write across processes: each PUT, overwrite and DELETE is seen by the
    very next GET or HEAD on a new connection, whichever process takes it."""
    writer = make_client(multi.endpoint)
    writer.create_bucket(Bucket="rwx")
    for round_ in range(30):
        key = f"k{round_ % 7}"
        body = os.urandom(100 + round_ * 37)
        writer.put_object(Bucket="rwx", Key=key, Body=body)
        assert _fresh(multi).get_object(Bucket="rwx", Key=key)["Body"].read() == body
        assert _fresh(multi).head_object(Bucket="rwx", Key=key)["ContentLength"] == len(body)
        ranged = _fresh(multi).get_object(Bucket="rwx", Key=key, Range="bytes=10-49")
        assert ranged["Body"].read() == body[10:50]
        if round_ % 5 == 4:
            writer.delete_object(Bucket="rwx", Key=key)
            with pytest.raises(ClientError) as error:
                _fresh(multi).get_object(Bucket="rwx", Key=key)
            assert error.value.response["Error"]["Code"] == "NoSuchKey"
    # A bucket made after the readers started is known to them at once.
    writer.create_bucket(Bucket="later")
    writer.put_object(Bucket="later", Key="x", Body=b"late")
    for _ in range(6):
        assert _fresh(multi).get_object(Bucket="later", Key="x")["Body"].read() == b"late"


def test_readers_answer_while_the_primary_is_stopped(multi) -> None:  # type: ignore[no-untyped-def]
    """With the primary frozen (SIGSTOP), GETs on new connections that land on a
    reader are still answered, byte-identical: the readers read on their own."""
    client = make_client(multi.endpoint)
    client.create_bucket(Bucket="frozen")
    body = os.urandom(10_240)
    client.put_object(Bucket="frozen", Key="obj", Body=body)
    for _ in range(4):  # every reader has caught up with the PUT before the freeze
        _fresh(multi).head_object(Bucket="frozen", Key="obj")
    os.kill(multi.process.pid, signal.SIGSTOP)
    answered = 0
    try:
        for _ in range(24):
            try:
                got = _fresh(multi, timeout_s=0.5).get_object(Bucket="frozen", Key="obj")
            except Exception:  # noqa: BLE001 - a connection the frozen primary holds
                continue
            assert got["Body"].read() == body
            answered += 1
    finally:
        os.kill(multi.process.pid, signal.SIGCONT)
    assert answered > 0


def test_other_requests_are_passed_to_the_primary(multi) -> None:  # type: ignore[no-untyped-def]
    """On one keep-alive connection, whatever process accepted it: a GET, then writes,
    listings, a multipart upload and a large object all work; readers passed
    connections on, and /metrics counts the requests of every process."""
    setup = make_client(multi.endpoint)
    setup.create_bucket(Bucket="mixed")
    setup.put_object(Bucket="mixed", Key="seed", Body=b"seed")
    before = _metric(multi, "petrel_requests_total")
    requests = 0
    large = os.urandom(3 * 1024 * 1024)  # over the packing threshold: a blob
    for i in range(8):
        client = _fresh(multi)
        assert client.get_object(Bucket="mixed", Key="seed")["Body"].read() == b"seed"
        client.put_object(Bucket="mixed", Key=f"p{i}", Body=f"body {i}".encode())
        assert client.get_object(Bucket="mixed", Key=f"p{i}")["Body"].read() == \
            f"body {i}".encode()
        names = [o["Key"] for o in client.list_objects_v2(Bucket="mixed")["Contents"]]
        assert f"p{i}" in names
        client.delete_object(Bucket="mixed", Key=f"p{i}")
        requests += 5
    client = _fresh(multi)
    client.put_object(Bucket="mixed", Key="large", Body=large)
    assert _fresh(multi).get_object(Bucket="mixed", Key="large")["Body"].read() == large
    requests += 2
    assert _metric(multi, "petrel_reader_connections_passed_on_total") > 0
    assert _metric(multi, "petrel_reader_processes") == READERS
    # Every request counted once, whichever process answered it.
    assert _metric(multi, "petrel_requests_total") - before == requests


def _settled_metric(gateway: Gateway, name: str) -> float:
    """`name` once two scrapes in a row agree (every reader answered both)."""
    total = _metric(gateway, name)
    for _ in range(10):
        again = _metric(gateway, name)
        if again == total:
            break
        total = again
    return total


def test_a_reader_that_dies_is_started_again(multi) -> None:  # type: ignore[no-untyped-def]
    """...and what it counted stays in the sums (a drop would be a counter reset)."""
    client = make_client(multi.endpoint)
    client.create_bucket(Bucket="phoenix")
    client.put_object(Bucket="phoenix", Key="k", Body=b"still here")
    _wait_readers(multi)
    for _ in range(24):  # some land on the victim
        assert _fresh(multi).get_object(Bucket="phoenix", Key="k")["Body"].read() == \
            b"still here"
    counted = _settled_metric(multi, "petrel_requests_total")
    victim = _reader_pids(multi)[1]
    os.kill(victim, signal.SIGKILL)
    _wait_readers(multi, starts=READERS + 1)
    assert _reader_pids(multi)[1] != victim
    assert _settled_metric(multi, "petrel_requests_total") == counted
    for _ in range(10):
        assert _fresh(multi).get_object(Bucket="phoenix", Key="k")["Body"].read() == \
            b"still here"
    assert _metric(multi, "petrel_reader_restarts_total") == 1


def test_readers_stop_with_the_primary(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM: readers drain and exit, the primary exits 0. SIGKILL of the primary:
    the readers notice their channel end and exit on their own."""
    for how in (signal.SIGTERM, signal.SIGKILL):
        gateway = start_gateway(str(tmp_path / f"data-{how.name}"), "--access-key",
                                ACCESS_KEY, "--secret-key", SECRET_KEY, "--processes",
                                str(READERS + 1))
        _wait_readers(gateway)
        pids = list(_reader_pids(gateway).values())
        assert all(_alive(pid) for pid in pids)
        gateway.process.send_signal(how)
        code = gateway.process.wait(30)
        assert code == (0 if how == signal.SIGTERM else -signal.SIGKILL)
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in pids)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", gateway.port), timeout=1).close()


def _petrel_client(gateway: Gateway, tmp_path, timeout_s: float = 10.0):  # type: ignore[no-untyped-def]
    from petrel.client import Client
    from petrel.transport import RetryPolicy, Timeouts

    conf = tmp_path / "petreloss.conf"
    conf.write_text(f"[DEFAULT]\ndefault_cluster = local\n[local]\nhost_base = "
                    f"{gateway.endpoint}\naccess_key = {ACCESS_KEY}\n"
                    f"secret_key = {SECRET_KEY}\n", encoding="utf-8")
    # Batch gets, which readers answer (a client reading records itself sends batch
    # locates, which the primary answers: tests/client/test_client_short_circuit.py).
    return Client(str(conf), retry=RetryPolicy(attempts_max=1),
                  timeouts=Timeouts(connect_s=timeout_s, read_s=timeout_s),
                  short_circuit=False)


def test_batch_gets_are_answered_by_readers(multi, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Batch gets on new connections: byte-identical, in order, missing keys as None,
    each overwrite seen by the next batch, a batch holding a large object passed to
    the primary, and readers answering batches while the primary is frozen."""
    s3 = make_client(multi.endpoint)
    s3.create_bucket(Bucket="batches")
    bodies = {f"o/{i:03d}": os.urandom(200 + i * 31) for i in range(120)}
    for key, body in bodies.items():
        s3.put_object(Bucket="batches", Key=key, Body=body)
    keys = [*bodies, "o/missing"]
    urls = [f"s3://batches/{key}" for key in keys]
    for round_ in range(8):
        bodies["o/007"] = f"version {round_}".encode()
        s3.put_object(Bucket="batches", Key="o/007", Body=bodies["o/007"])
        client = _petrel_client(multi, tmp_path)
        assert client.get_batch(urls) == [bodies.get(key) for key in keys]
        client.close()
    large = os.urandom(3 * 1024 * 1024)
    s3.put_object(Bucket="batches", Key="large", Body=large)
    for _ in range(4):
        client = _petrel_client(multi, tmp_path)
        assert client.get_batch(["s3://batches/o/001", "s3://batches/large"]) == \
            [bodies["o/001"], large]
        client.close()
    for _ in range(4):  # every reader has caught up before the freeze
        _fresh(multi).head_object(Bucket="batches", Key="o/007")
    os.kill(multi.process.pid, signal.SIGSTOP)
    answered = 0
    try:
        for _ in range(16):
            client = _petrel_client(multi, tmp_path, timeout_s=0.5)
            try:
                got = client.get_batch(urls[:50])
            except Exception:  # noqa: BLE001 - a connection the frozen primary holds
                continue
            finally:
                client.close()
            assert got == [bodies[key] for key in keys[:50]]
            answered += 1
    finally:
        os.kill(multi.process.pid, signal.SIGCONT)
    assert answered > 0


def test_a_reader_that_does_not_answer_a_scrape_counts_with_its_last_numbers(multi) -> None:  # type: ignore[no-untyped-def]
    """A reader frozen during a scrape (SIGSTOP: as a busy or stalled one) is counted
    with what it last reported: a sum that dropped for one scrape would look to
    Prometheus like a counter reset. Each reader is frozen in turn; between them they
    served some of the GETs, so leaving one out would lower the total."""
    client = make_client(multi.endpoint)
    client.create_bucket(Bucket="frozen-scrape")
    client.put_object(Bucket="frozen-scrape", Key="k", Body=b"v")
    _wait_readers(multi)
    for _ in range(24):
        assert _fresh(multi).get_object(Bucket="frozen-scrape", Key="k")["Body"].read() == b"v"
    total = _settled_metric(multi, "petrel_requests_total")
    for pid in _reader_pids(multi).values():
        os.kill(pid, signal.SIGSTOP)
        try:
            seen = None
            for _ in range(10):  # a scrape's connection may land on the frozen reader
                try:
                    seen = _metric(multi, "petrel_requests_total", timeout_s=5.0)
                    break
                except OSError:
                    continue
        finally:
            os.kill(pid, signal.SIGCONT)
        assert seen == total


def test_concurrent_scrapes_each_count_every_process(multi) -> None:  # type: ignore[no-untyped-def]
    """Scrapes at the same moment each get every reader's numbers (replies pair with
    scrapes in order), so each counts every GET once."""
    import concurrent.futures

    client = make_client(multi.endpoint)
    client.create_bucket(Bucket="scrapes")
    client.put_object(Bucket="scrapes", Key="k", Body=b"v")
    for _ in range(12):
        assert _fresh(multi).get_object(Bucket="scrapes", Key="k")["Body"].read() == b"v"
    expected = _metric(multi, "petrel_requests_total")  # settled: nothing runs now
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        # A scrape is a request too (not counted): each sees the same totals.
        seen = list(pool.map(lambda _: _metric(multi, "petrel_requests_total"), range(6)))
    assert seen == [expected] * 6


def test_small_puts_are_taken_by_readers(multi) -> None:  # type: ignore[no-untyped-def]
    """A small PUT on a connection a reader accepted is checked there and stored by the
    primary over the write link (petrel_gateway.writes): the connection stays with the
    reader, the ETag and metadata are the primary's, and the next GET on any process
    reads it back."""
    import hashlib

    make_client(multi.endpoint).create_bucket(Bucket="taken")
    passed = _metric(multi, "petrel_reader_connections_passed_on_total")
    for i in range(24):
        body = os.urandom(1000 + i * 97)
        key = f"w/{i:03d}"
        put = _fresh(multi).put_object(Bucket="taken", Key=key, Body=body,
                                       Metadata={"n": str(i)})
        assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
        got = _fresh(multi).get_object(Bucket="taken", Key=key)
        assert got["Body"].read() == body and got["Metadata"] == {"n": str(i)}
    for _ in range(6):
        with pytest.raises(ClientError) as missing:
            _fresh(multi).put_object(Bucket="no-such-bucket", Key="k", Body=b"x")
        assert missing.value.response["Error"]["Code"] == "NoSuchBucket"
    # None of those connections went to the primary (the scrape itself may have).
    assert _metric(multi, "petrel_reader_connections_passed_on_total") - passed <= 1


def test_a_put_a_reader_took_is_acknowledged_only_once_stored(multi) -> None:  # type: ignore[no-untyped-def]
    """With the primary frozen, a reader still checks a PUT (a wrong Content-MD5 is
    refused at once) but acknowledges none: only the primary stores. Thawed, the
    writes go through."""
    import base64

    client = make_client(multi.endpoint)
    client.create_bucket(Bucket="thaw")
    for _ in range(4):  # every reader has seen the bucket before the freeze
        _fresh(multi).head_bucket(Bucket="thaw")
    wrong_md5 = base64.b64encode(b"\0" * 16).decode()
    os.kill(multi.process.pid, signal.SIGSTOP)
    refused = acknowledged = 0
    try:
        for i in range(16):
            s3 = _fresh(multi, timeout_s=0.5)
            try:
                s3.put_object(Bucket="thaw", Key=f"bad{i}", Body=b"body", ContentMD5=wrong_md5)
            except ClientError as exc:
                assert exc.response["Error"]["Code"] == "BadDigest"
                refused += 1
            except Exception:  # noqa: BLE001 - a connection the frozen primary holds
                pass
            try:
                _fresh(multi, timeout_s=0.5).put_object(Bucket="thaw", Key=f"ok{i}", Body=b"ok")
                acknowledged += 1
            except Exception:  # noqa: BLE001 - not acknowledged while the primary is frozen
                pass
    finally:
        os.kill(multi.process.pid, signal.SIGCONT)
    assert refused > 0, "no reader checked a PUT on its own"
    assert acknowledged == 0
    for i in range(8):
        _fresh(multi).put_object(Bucket="thaw", Key=f"after{i}", Body=f"after {i}".encode())
        assert _fresh(multi).get_object(Bucket="thaw", Key=f"after{i}")["Body"].read() == \
            f"after {i}".encode()


def test_index_catch_ups_are_counted_and_reads_alone_make_none(multi) -> None:  # type: ignore[no-untyped-def]
    client = make_client(multi.endpoint)
    client.create_bucket(Bucket="catchup")
    client.put_object(Bucket="catchup", Key="k", Body=b"v1")
    # Every reader reads it (each catches up once for it): the kernel spreads new
    # connections over the 3 processes at random, so 8 leave a reader out about 8% of
    # the time (and it catches up in the loop below); 40 leave one out 1 in 10^7.
    for _ in range(40):
        assert _fresh(multi).get_object(Bucket="catchup", Key="k")["Body"].read() == b"v1"
    settled = _metric(multi, "petrel_reader_index_catch_ups_total")
    assert settled >= READERS  # at least each reader's first, at its start
    assert _metric(multi, "petrel_reader_index_catch_up_seconds_total") > 0
    for _ in range(16):  # nothing written since: no reader catches up
        assert _fresh(multi).get_object(Bucket="catchup", Key="k")["Body"].read() == b"v1"
    assert _metric(multi, "petrel_reader_index_catch_ups_total") == settled
    client.put_object(Bucket="catchup", Key="k", Body=b"v2")
    for _ in range(8):
        assert _fresh(multi).get_object(Bucket="catchup", Key="k")["Body"].read() == b"v2"
    assert _metric(multi, "petrel_reader_index_catch_ups_total") > settled
