"""Every kind of server the app builds: datagrams, many keep-alive clients, xmlrpc, wsgiref."""

from __future__ import annotations

import contextlib
import http.client
import os
import selectors
import signal
import socket
import tempfile
import time
import xmlrpc.client
from collections.abc import Iterator
from typing import Any

import pytest

from .harness import READY, http_get, parse_pid_body, process_group_members

DATAGRAM_CLIENTS = 8
DATAGRAM_ROUNDS = 100


@contextlib.contextmanager
def short_tmpdir() -> Iterator[str]:
    """A private directory under /tmp, short enough for Unix socket paths."""
    with tempfile.TemporaryDirectory(prefix="pfe-", dir="/tmp") as path:
        yield path


def datagram_rounds(
    family: int, address: Any, worker_pids: set[int], client_paths: list[str] | None = None
) -> set[int]:
    """Send rounds of concurrent datagrams; return the worker pids that answered.

    Stops once more than one worker has answered (after a few rounds), or after
    ``DATAGRAM_ROUNDS`` rounds: the kernel wakes every worker waiting on the
    shared socket and whichever is first takes the datagram.
    """
    socks = []
    answered: set[int] = set()
    try:
        for n in range(DATAGRAM_CLIENTS):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.settimeout(10)
            if client_paths is not None:
                sock.bind(client_paths[n])
        for round_number in range(DATAGRAM_ROUNDS):
            for n, sock in enumerate(socks):
                sock.sendto(b"hello %d %d" % (round_number, n), address)
            for n, sock in enumerate(socks):
                reply = sock.recv(65536)
                pid, payload = reply.split(b" ", 1)
                assert payload == b"hello %d %d" % (round_number, n)
                answered.add(int(pid))
            if len(answered) > 1 and round_number >= 4:
                break
    finally:
        for sock in socks:
            sock.close()
    assert answered <= worker_pids, (answered, worker_pids)
    assert len(answered) > 1, f"only {answered} answered over {DATAGRAM_ROUNDS} rounds"
    return answered


@pytest.mark.timeout(60)
def test_udp_echo_answers_from_several_workers(start_server):
    server = start_server("--kind", "udp-echo", "--workers", 2, "--threads", 2)
    server.wait_for_line(READY, count=2)
    workers = server.wait_for_workers(2)
    datagram_rounds(socket.AF_INET, server.address, workers)


@pytest.mark.timeout(60)
def test_unix_datagram_echo_answers_from_several_workers(start_server):
    with short_tmpdir() as tmp:
        path = os.path.join(tmp, "server.sock")
        server = start_server("--kind", "unix-dgram-echo", "--path", path, "--workers", 2)
        assert server.address == path
        server.wait_for_line(READY, count=2)
        workers = server.wait_for_workers(2)
        clients = [os.path.join(tmp, f"client{n}.sock") for n in range(DATAGRAM_CLIENTS)]
        datagram_rounds(socket.AF_UNIX, path, workers, clients)


DATAGRAM_BURST = 40


@pytest.mark.timeout(60)
def test_replies_to_a_client_that_reads_late_wait_instead_of_being_dropped(start_server):
    """A burst of datagrams from a client that reads its replies only afterwards: its queue
    holds few (net.unix.max_dgram_qlen, 10 by default), so the workers' replies must wait
    for room, as the standard library's blocking sockets do, not fail with EAGAIN."""
    with short_tmpdir() as tmp:
        path = os.path.join(tmp, "server.sock")
        # 2 x 16 threads plus the server's own queue hold the whole burst, so the client
        # finishes sending before it reads (the replies then wait in sendto).
        server = start_server(
            "--kind", "unix-dgram-echo", "--path", path, "--workers", 2, "--threads", 16
        )
        server.wait_for_line(READY, count=2)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.bind(os.path.join(tmp, "client.sock"))
            client.settimeout(10)
            for n in range(DATAGRAM_BURST):
                client.sendto(b"burst %d" % n, path)
            replies = set()
            for _ in range(DATAGRAM_BURST):
                _, payload = client.recv(65536).split(b" ", 1)
                replies.add(payload)
        assert replies == {b"burst %d" % n for n in range(DATAGRAM_BURST)}
        assert not server.find("BlockingIOError"), server.tail()


# -- many keep-alive connections ------------------------------------------------------------

KEEPALIVE_CLIENTS = 200
KEEPALIVE_ROUNDS = 3
REQUEST = b"GET /pid HTTP/1.1\r\nHost: test\r\n\r\n"


def parse_response(buffer: bytes) -> tuple[int, bytes] | None:
    """``(status, body)`` once ``buffer`` holds one complete response, else None."""
    head, sep, body = buffer.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if len(body) < length:
        return None
    assert len(body) == length, f"more than one response: {buffer!r}"
    return status, body


def request_round(socks: list[socket.socket], timeout: float) -> list[tuple[int, bytes]]:
    """Send one request on every connection at once; return the responses in order."""
    for sock in socks:
        sock.sendall(REQUEST)
    buffers = {sock: b"" for sock in socks}
    results: dict[socket.socket, tuple[int, bytes]] = {}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        while len(results) < len(socks):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"only {len(results)} of {len(socks)} responses in {timeout}s"
            for key, _ in selector.select(remaining):
                sock = key.fileobj
                chunk = sock.recv(65536)  # type: ignore[union-attr]
                assert chunk, f"the server closed connection {socks.index(sock)}"  # type: ignore[arg-type]
                buffers[sock] += chunk  # type: ignore[index]
                if (response := parse_response(buffers[sock])) is not None:  # type: ignore[index]
                    results[sock] = response  # type: ignore[index]
                    selector.unregister(sock)
    return [results[sock] for sock in socks]


@pytest.mark.timeout(120)
def test_200_keepalive_clients_each_get_every_reply(start_server):
    server = start_server(
        "--kind", "http", "--workers", 2, "--threads", 4, "--keepalive-timeout", 30
    )
    server.wait_for_line(READY, count=2)
    workers = server.wait_for_workers(2)
    socks: list[socket.socket] = []
    try:
        for _ in range(KEEPALIVE_CLIENTS):
            sock = socket.create_connection(server.address, timeout=10)
            socks.append(sock)
        served_by: list[int] | None = None
        for round_number in range(KEEPALIVE_ROUNDS):
            responses = request_round(socks, timeout=30)
            statuses = [status for status, _ in responses]
            assert statuses == [200] * KEEPALIVE_CLIENTS, f"round {round_number}: {statuses}"
            pids = [parse_pid_body(body.decode())[0] for _, body in responses]
            assert set(pids) <= workers
            if served_by is None:
                served_by = pids
            # Each client kept its one connection, parked in the same worker.
            assert pids == served_by, f"round {round_number}: a connection changed worker"
    finally:
        for sock in socks:
            sock.close()


# -- other kinds of server ------------------------------------------------------------------


def tcp_echo(address: tuple[str, int]) -> int:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"ping\n")
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    pid, payload = data.split(b" ", 1)
    assert payload == b"ping\n"
    return int(pid)


def xmlrpc_pid(address: tuple[str, int]) -> int:
    class Transport(xmlrpc.client.Transport):
        def make_connection(self, host: Any) -> http.client.HTTPConnection:
            conn = super().make_connection(host)
            conn.timeout = 10
            return conn

    url = f"http://{address[0]}:{address[1]}/"
    with xmlrpc.client.ServerProxy(url, transport=Transport()) as proxy:
        pid, generation = proxy.pid()
    assert generation == 1
    return int(pid)


def wsgiref_pid(address: tuple[str, int]) -> int:
    pid, generation = parse_pid_body(http_get(address, "/"))
    assert generation == 1
    return pid


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("kind", "call"),
    [("tcp-echo", tcp_echo), ("xmlrpc", xmlrpc_pid), ("wsgiref", wsgiref_pid)],
    ids=["tcp-echo", "xmlrpc", "wsgiref"],
)
def test_other_kinds_of_server_answer_from_workers_and_stop_on_term(start_server, kind, call):
    server = start_server("--kind", kind, "--workers", 2, "--threads", 2)
    server.wait_for_line(READY, count=2)
    workers = server.wait_for_workers(2)
    answered = {call(server.address) for _ in range(20)}
    assert answered <= workers and server.pid not in answered
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0, server.tail()
    assert not process_group_members(server.pid)
