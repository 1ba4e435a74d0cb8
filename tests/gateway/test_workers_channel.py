"""The pieces under `petrel serve --processes N` that can be checked alone: the channel
that carries connections between processes, the sum of the processes' metrics, and
the default number of processes."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from petrel_gateway import channel as ch
from petrel_gateway.metrics import Metrics, add_samples


def test_a_socket_travels_with_the_bytes_received_on_it() -> None:
    left, right = socket.socketpair()
    sender, receiver = ch.Channel(left), ch.Channel(right)
    client, server = socket.socketpair()
    received = b"GET /b/k HTTP/1.1\r\n" + os.urandom(300_000)  # more than one send
    result: list[tuple[bytes, bytes, int | None]] = []
    thread = threading.Thread(target=lambda: result.append(receiver.receive()))
    thread.start()
    sender.send(ch.HAND_OVER, received, server.fileno())
    thread.join(10)
    kind, payload, fd = result[0]
    assert kind == ch.HAND_OVER and payload == received and fd is not None
    server.close()  # the sender's copy goes; the connection lives on in the receiver
    adopted = socket.socket(fileno=fd)
    client.sendall(b"after the hand-over")
    assert adopted.recv(100) == b"after the hand-over"
    adopted.sendall(b"answer")
    assert client.recv(100) == b"answer"
    # Messages without a descriptor, in order.
    sender.send(ch.COLLECT)
    sender.send(ch.SETTINGS, b"x" * 10)
    assert receiver.receive() == (ch.COLLECT, b"", None)
    assert receiver.receive() == (ch.SETTINGS, b"x" * 10, None)
    sender.close()
    with pytest.raises(ch.ChannelClosed):
        receiver.receive()
    for sock in (adopted, client):
        sock.close()
    receiver.close()


def test_a_message_cut_short_ends_the_channel() -> None:
    left, right = socket.socketpair()
    receiver = ch.Channel(right)
    left.sendall(b"S\x00\x00\x00\x10short")  # promises 16 bytes, sends 5
    left.close()
    with pytest.raises(ch.ChannelClosed):
        receiver.receive()
    receiver.close()


def test_readers_metrics_are_added_to_the_primarys() -> None:
    primary, reader = Metrics(None), Metrics(None)
    primary.observe("put_object", 200, 0.004, 100, 0)
    primary.observe("get_object", 200, 0.001, 0, 10)
    reader.observe("get_object", 200, 0.002, 0, 20)
    reader.observe("get_object", 200, 0.003, 0, 20)
    reader.observe("head_object", 404, 0.001, 0, 0)
    text = primary.render([reader.samples()]).decode()
    lines = set(text.splitlines())
    assert 'petrel_requests_total{operation="get_object",status="200"} 3.0' in lines
    assert 'petrel_requests_total{operation="put_object",status="200"} 1.0' in lines
    assert 'petrel_requests_total{operation="head_object",status="404"} 1.0' in lines
    assert 'petrel_request_seconds_count{operation="get_object"} 3.0' in lines
    assert "petrel_bytes_sent_total 50.0" in lines
    assert "petrel_bytes_received_total 100.0" in lines
    # Each family once, whatever the readers sent.
    assert text.count("# TYPE petrel_requests_total counter") == 1


def test_the_numbers_of_ended_readers_add_up() -> None:
    """add_samples: what readers that have ended counted, summed into one set that the
    primary adds to every scrape (per sample name and labels; timestamps dropped)."""
    first, second, primary = Metrics(None), Metrics(None), Metrics(None)
    first.observe("get_object", 200, 0.002, 0, 20)
    second.observe("get_object", 200, 0.003, 0, 30)
    second.observe("head_object", 404, 0.001, 0, 0)
    retired = add_samples(add_samples([], first.samples()), second.samples())
    assert not any(name.endswith("_created") for _, _, _, values in retired
                   for name, _, _ in values)
    lines = set(primary.render([retired]).decode().splitlines())
    assert 'petrel_requests_total{operation="get_object",status="200"} 2.0' in lines
    assert 'petrel_requests_total{operation="head_object",status="404"} 1.0' in lines
    assert 'petrel_request_seconds_count{operation="get_object"} 2.0' in lines
    assert "petrel_bytes_sent_total 50.0" in lines


def test_default_processes_follow_the_cpu_quota(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from petrel.cli.serve import usable_cores

    cores = len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # 1.5 CPUs: two processes
    assert usable_cores(str(quota)) == min(cores, 2)
    quota.write_text("max 100000\n")
    assert usable_cores(str(quota)) == cores
    quota.write_text("garbage\n")
    assert usable_cores(str(quota)) == cores
    assert usable_cores(str(tmp_path / "absent")) == cores
