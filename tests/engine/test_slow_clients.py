"""Slow and silent clients cannot take the threads of an http.server handler."""

from __future__ import annotations

import contextlib
import http.client
import socket

import pytest

from .harness import READY, http_get, parse_pid_body, wait_until


def read_reply(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    reply = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


@pytest.mark.timeout(90)
def test_slowloris_and_silent_connections_do_not_stop_everyone_else(start_server) -> None:
    """50 half-sent heads and 50 silent connections on 2 workers x 4 threads: others are served."""
    server = start_server("--kind", "http", "--workers", 2, "--threads", 4,
                          "--header-timeout", 3)  # fmt: skip
    server.wait_for_line(READY, count=2)
    workers = server.wait_for_workers(2)
    slow: list[socket.socket] = []
    try:
        for n in range(100):
            sock = socket.create_connection(server.address, timeout=20)
            slow.append(sock)
            if n % 2 == 0:
                sock.sendall(b"GET /pid HTTP/1.1\r\nHost: slow\r\nX-Slow: ")  # never finished
        # Every thread is free for real clients: 200 requests, 8 at a time per connection.
        conns = [http.client.HTTPConnection(*server.address, timeout=20) for _ in range(8)]
        try:
            for _ in range(25):
                for conn in conns:
                    conn.request("GET", "/pid")
                    response = conn.getresponse()
                    assert response.status == 200
                    assert parse_pid_body(response.read().decode())[0] in workers
        finally:
            for conn in conns:
                conn.close()
        # The half-sent heads get 408 once header_timeout passes; the silent ones are closed.
        partial, silent = slow[0], slow[1]
        assert read_reply(partial).startswith(b"HTTP/1.1 408 ")
        assert read_reply(silent) == b""
    finally:
        for sock in slow:
            sock.close()
    assert http_get(server.address, "/pid")


@pytest.mark.timeout(90)
def test_a_client_that_does_not_read_holds_a_thread_only_for_io_timeout(start_server) -> None:
    """1 worker x 1 thread: a client that never reads its 64 MiB reply frees the thread."""
    size = 64 << 20
    server = start_server("--kind", "http", "--workers", 1, "--threads", 1,
                          "--io-timeout", 2)  # fmt: skip
    server.wait_for_line(READY)
    stalled = socket.socket()
    try:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a tiny window
        stalled.settimeout(20)
        stalled.connect(server.address)
        stalled.sendall(f"GET /big?n={size} HTTP/1.1\r\nHost: slow\r\n\r\n".encode())
        server.wait_for_line(r"request /big: sending")
        # The only thread is stuck writing; only io_timeout can free it for this request.
        answer = http_get(server.address, "/pid", timeout=30)
        assert parse_pid_body(answer)[0] in server.worker_pids()
        # The stalled reply was cut off: the connection ends before all of it arrived.
        assert len(read_reply(stalled)) < size
    finally:
        stalled.close()


@pytest.mark.timeout(60)
def test_an_oversized_head_gets_431(start_server) -> None:
    server = start_server("--kind", "http", "--workers", 1)
    server.wait_for_line(READY)
    with socket.create_connection(server.address, timeout=20) as sock:
        sock.sendall(b"GET /pid HTTP/1.1\r\n" + b"X-Big: " + b"a" * 70000 + b"\r\n")
        assert read_reply(sock).startswith(b"HTTP/1.1 431 ")
    wait_until(lambda: http_get(server.address, "/pid"), 10, "the server to keep serving")
