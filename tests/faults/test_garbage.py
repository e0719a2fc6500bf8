"""Garbage on every kind of listener, under normal traffic: nothing crashes, all still serve."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import random
import selectors
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli.harness import UnixHTTPConnection, tcp_address
from engine.harness import EXITED, READY

from .helpers import CallLoad, read_until_closed

#: The largest UDP payload over IPv4: 64 KiB - 1 - 8 (UDP header) - 20 (IP header).
MAX_UDP = 65507
#: What prefork's datagram servers read of a datagram (``UDPServer.max_packet_size``).
MAX_PACKET = 8192


# -- normal requests ----------------------------------------------------------------------------


def http_ok(address: Any) -> None:
    conn: http.client.HTTPConnection
    if isinstance(address, str):
        conn = UnixHTTPConnection(address)
    else:
        conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request("GET", "/pid")
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (response.status, body)
    finally:
        conn.close()


def stream_socket(address: Any) -> socket.socket:
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        try:
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return sock
    return socket.create_connection(address, timeout=10)


def echo_ok(address: Any) -> None:
    with stream_socket(address) as sock:
        sock.sendall(b"hello\n")
        sock.shutdown(socket.SHUT_WR)
        reply = read_until_closed(sock)
    assert reply.split(b" ", 1)[1] == b"hello\n", reply


class DatagramClient:
    """A client socket for ``address`` (bound, for Unix datagrams, to a path of its own)."""

    def __init__(self, address: Any, directory: Path | None = None) -> None:
        self.address = address
        if isinstance(address, str):
            assert directory is not None
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.bind(str(directory / f"c{next(_client_numbers)}.sock"))
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(10)

    def exchange(self, data: bytes) -> bytes:
        self.sock.sendto(data, self.address)
        return self.sock.recv(1 << 17)

    def close(self) -> None:
        self.sock.close()


#: Numbers for the client sockets' paths (the bound path stays until the directory goes).
_client_numbers = itertools.count()


def datagram_ok(address: Any, directory: Path | None) -> None:
    client = DatagramClient(address, directory)
    try:
        reply = client.exchange(b"hello")
    finally:
        client.close()
    assert reply.split(b" ", 1)[1] == b"hello", reply


# -- garbage ------------------------------------------------------------------------------------


def attempt(action: Callable[[], object]) -> None:
    """Run one garbage action; the server may close or reset at any point: that is fine."""
    with contextlib.suppress(OSError):
        action()


def send_while_reading(sock: socket.socket, data: bytes, timeout: float = 10.0) -> None:
    """Send ``data``, then EOF, reading whatever comes back meanwhile (an echo server's
    replies would otherwise fill the buffers and block both sides), until the server
    closes."""
    deadline = time.monotonic() + timeout
    view = memoryview(data)
    sock.setblocking(False)
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while time.monotonic() < deadline:
            for _, events in selector.select(deadline - time.monotonic()):
                if events & selectors.EVENT_READ and not sock.recv(65536):
                    return
                if events & selectors.EVENT_WRITE:
                    view = view[sock.send(view[:65536]) :]
                    if not view:
                        sock.shutdown(socket.SHUT_WR)
                        selector.modify(sock, selectors.EVENT_READ)


def stream_garbage(address: Any, rng: random.Random) -> int:
    """Random bytes, half-open and abandoned connections on a stream listener; the count."""
    actions: list[Callable[[], object]] = []

    def random_bytes(size: int, end: bytes = b"") -> Callable[[], object]:
        def run() -> None:
            with stream_socket(address) as sock:
                send_while_reading(sock, rng.randbytes(size) + end)

        return run

    def half_open(data: bytes) -> Callable[[], object]:
        def run() -> None:
            with stream_socket(address) as sock:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                read_until_closed(sock)

        return run

    def abandoned(data: bytes, reset: bool) -> Callable[[], object]:
        def run() -> None:
            sock = stream_socket(address)
            try:
                if data:
                    sock.sendall(data)
                if reset:  # close with RST instead of FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            finally:
                sock.close()

        return run

    for size in (1, 2, 100, 4096, 65536, 70000, 1 << 20):
        actions.append(random_bytes(size))
        actions.append(random_bytes(size, b"\r\n\r\n"))
    for data in (b"", b"GET /pid HTTP/1.1\r\nHo", b"GET /pid HTTP/1.1\r\n\r\n"[:-1], b"hel"):
        actions.append(half_open(data))
        actions.append(abandoned(data, reset=False))
        actions.append(abandoned(data, reset=True))
    actions.append(half_open(b"POST /pid HTTP/1.1\r\nContent-Length: 100000\r\n\r\nabc"))
    actions.append(half_open(b"\x00" * 1000 + b"\n" * 1000))
    for action in actions:
        attempt(action)
    return len(actions)


def datagram_garbage(address: Any, directory: Path | None, rng: random.Random) -> int:
    """Random, empty and oversized datagrams, and senders that cannot get a reply."""
    count = 0
    unix = isinstance(address, str)
    client = DatagramClient(address, directory)
    try:
        sizes = [0, 1, 100, MAX_PACKET - 1, MAX_PACKET, MAX_PACKET + 1, 20000, MAX_UDP]
        if unix:
            sizes += [100_000, 200_000]
        for size in sizes:
            data = rng.randbytes(size)
            try:
                reply = client.exchange(data)
            except OSError as exc:  # larger than this socket can send: not the server's doing
                assert unix and size > MAX_UDP, exc
                continue
            count += 1
            # Read up to max_packet_size: a larger datagram is truncated, never a crash.
            pid, _, payload = reply.partition(b" ")
            assert pid.isdigit() and payload == data[:MAX_PACKET], (size, len(payload))
    finally:
        client.close()
    # A sender gone before the reply, and (Unix) one with no address to reply to.
    for _ in range(5):
        gone = DatagramClient(address, directory)
        gone.sock.sendto(rng.randbytes(100), address)
        gone.close()
        count += 1
    if unix:
        for _ in range(5):
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unbound:
                unbound.sendto(rng.randbytes(100), address)
            count += 1
    return count


# -- the test -----------------------------------------------------------------------------------

KINDS = {
    "http": ("faultapp:Hello", "tcp://127.0.0.1:0", "unix:{dir}/s.sock"),
    "echo": ("faultapp:Echo", "tcp://127.0.0.1:0", "unix:{dir}/s.sock"),
    "datagram": ("faultapp:DatagramEcho", "udp://127.0.0.1:0", "unix-dgram:{dir}/s.sock"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", list(KINDS))
def test_garbage_crashes_nothing_and_normal_requests_still_work(
    start_command, short_dir: Path, figures, kind: str
) -> None:
    app, inet, unix = KINDS[kind]
    unix = unix.format(dir=short_dir)
    command = start_command("-w", 2, "--threads", 4, "--header-timeout", 5,
                            "-b", inet, "-b", unix, app, binds=2)  # fmt: skip
    command.wait_for_line(READY, count=2)
    master, workers = command.pid, command.wait_for_workers(2)
    addresses = [
        text.split(":", 1)[1] if text.startswith("unix") else tcp_address(text)
        for text in command.addresses
    ]
    clients_dir = short_dir / "clients"
    clients_dir.mkdir()

    def normal(address: Any) -> Callable[[], None]:
        if kind == "http":
            return lambda: http_ok(address)
        if kind == "echo":
            return lambda: echo_ok(address)
        return lambda: datagram_ok(address, clients_dir)

    loads = [CallLoad(normal(address), clients=2, name=f"normal-{n}") for n, address in
             enumerate(addresses)]  # fmt: skip
    rng = random.Random(20240501)
    garbage = 0
    try:
        for load in loads:
            load.start()
        for load in loads:
            load.wait_for_successes(20)
        for address in addresses:
            if kind == "datagram":
                garbage += datagram_garbage(address, clients_dir, rng)
            else:
                garbage += stream_garbage(address, rng)
        for load in loads:
            load.wait_for_successes(20)
    finally:
        for load in loads:
            load.stop()
    # Nothing crashed: same master, same workers, no worker exit; everything still serves.
    assert command.proc.poll() is None
    assert command.worker_pids() == workers
    assert not command.find(EXITED)
    for address in addresses:
        normal(address)()

    names = ", ".join(text.split(":", 1)[0] for text in command.addresses)
    figures.fault = f"garbage input on {kind} listeners ({names})"
    figures.load = f"2 clients of normal {kind} requests per listener, 2 workers x 4 threads"
    figures.count(garbage, 0)
    for load in loads:
        figures.count(load.sent, len(load.failures))
    figures.recovery = "none needed: master and worker pids unchanged, no worker exited"
    figures.bound = "no crash; 0 normal requests failed; all still serve"
    figures.note(f"{garbage} garbage connections or datagrams on {names}")
    if kind == "datagram":
        figures.note("datagrams over max_packet_size (8192) are answered truncated to it")
    for load in loads:
        assert not load.failures, load.report()
    assert master == command.pid
