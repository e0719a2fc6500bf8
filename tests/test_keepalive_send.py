"""keepalive.send_all: a direct write first, ``sendall`` (and its timeout) for the rest."""

from __future__ import annotations

import array
import socket
import threading
import time

import pytest

from prefork.engine.keepalive import send_all


def _read_exactly(sock: socket.socket, size: int, out: list[bytes]) -> None:
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    out.append(b"".join(chunks))


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(bytes(range(256)) * (16 * 1024), id="bytes"),  # 4 MiB: a partial write
        # 4 MiB of 4-byte items: the remainder must be counted in bytes, not items
        pytest.param(array.array("i", range(1024 * 1024)), id="wide-items"),
    ],
)
def test_a_payload_larger_than_the_socket_buffer_arrives_whole(payload) -> None:
    expected = bytes(payload)
    left, right = socket.socketpair()
    with left, right:
        left.settimeout(20)
        right.settimeout(20)
        received: list[bytes] = []
        reader = threading.Thread(target=_read_exactly, args=(right, len(expected), received))
        reader.start()
        try:
            send_all(left, payload)
        finally:
            reader.join(30)
        assert not reader.is_alive()
        assert received == [expected]


@pytest.mark.timeout(60)
def test_a_peer_that_never_reads_gets_the_socket_timeout() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.settimeout(0.5)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            send_all(left, b"x" * (64 * 1024 * 1024))
        assert time.monotonic() - started < 20
