"""``PreforkMixIn`` over the standard library's servers, served from a thread of the test."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import threading
import wsgiref.simple_server
import xmlrpc.client
import xmlrpc.server
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

import prefork

from .harness import LOCALHOST, wait_until

REQUESTS = 40


class PidHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler answering the pid of the process that served it."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = str(os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent."""


class PreforkHTTPServer(prefork.PreforkMixIn, http.server.HTTPServer):
    workers = 2
    threads = 2
    graceful_timeout = 5.0


class PreforkXMLRPCServer(prefork.PreforkMixIn, xmlrpc.server.SimpleXMLRPCServer):
    workers = 2
    threads = 2
    graceful_timeout = 5.0


class PreforkWSGIServer(prefork.PreforkMixIn, wsgiref.simple_server.WSGIServer):
    workers = 2
    threads = 2
    graceful_timeout = 5.0


class QuietWSGIRequestHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Silent."""


def pid_app(environ: Any, start_response: Any) -> list[bytes]:
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class TimeoutTransport(xmlrpc.client.Transport):
    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        conn = super().make_connection(host)
        conn.timeout = 10
        return conn


def http_pid(address: tuple[str, int]) -> int:
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.status == 200
        return int(response.read())
    finally:
        conn.close()


def make_http() -> tuple[Any, Callable[[tuple[str, int]], int]]:
    return PreforkHTTPServer((LOCALHOST, 0), PidHandler), http_pid


def make_xmlrpc() -> tuple[Any, Callable[[tuple[str, int]], int]]:
    server = PreforkXMLRPCServer((LOCALHOST, 0), logRequests=False)
    server.register_function(os.getpid, "pid")

    def call(address: tuple[str, int]) -> int:
        url = f"http://{address[0]}:{address[1]}/"
        with xmlrpc.client.ServerProxy(url, transport=TimeoutTransport()) as proxy:
            return int(proxy.pid())

    return server, call


def make_wsgiref() -> tuple[Any, Callable[[tuple[str, int]], int]]:
    server = PreforkWSGIServer((LOCALHOST, 0), QuietWSGIRequestHandler)
    server.set_app(pid_app)
    return server, http_pid


@contextlib.contextmanager
def serving_in_thread(server: Any) -> Iterator[threading.Thread]:
    """``serve_forever()`` in a thread; ``shutdown()``, ``server_close()`` and join always."""
    thread = threading.Thread(target=server.serve_forever, name="serve_forever")
    thread.start()
    try:
        yield thread
    finally:
        try:
            server.shutdown()
        finally:
            server.server_close()
            thread.join(20)
    assert not thread.is_alive(), "serve_forever() did not return after shutdown()"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("make", [make_http, make_xmlrpc, make_wsgiref], ids=lambda f: f.__name__)
def test_prefork_mixin_over_a_stdlib_server_in_process(make):
    me = psutil.Process()
    before = {child.pid for child in me.children(recursive=True)}
    server, call = make()
    address = server.server_address[:2]
    workers: set[int] = set()
    with serving_in_thread(server):
        answered_by = {call(address) for _ in range(REQUESTS)}
        workers = {child.pid for child in me.children()} - before
        assert os.getpid() not in answered_by
        assert answered_by <= workers, (answered_by, workers)
        assert len(workers) == server.workers
    # shutdown() stopped the workers and server_close() closed the socket.
    assert server.socket.fileno() == -1
    wait_until(
        lambda: not ({child.pid for child in me.children(recursive=True)} - before),
        timeout=10,
        message="no child process left",
    )
    assert all(not psutil.pid_exists(pid) for pid in workers)
