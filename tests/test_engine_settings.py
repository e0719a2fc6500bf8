"""PreforkMixIn's settings: constructor keywords, defaults and the listen backlog."""

from __future__ import annotations

import http.server
import os
import socket
import socketserver

import prefork
from prefork.engine.listeners import listen_backlog as _listen_backlog


class Handler(prefork.BaseRequestHandler):
    """Never called: these tests do not serve."""


def test_settings_are_class_attributes_overridden_by_keywords() -> None:
    with prefork.PreforkTCPServer(("127.0.0.1", 0), Handler, workers=3, threads=2) as server:
        assert (server.workers, server.threads) == (3, 2)
        assert server.configured_workers() == 3
        assert server.socket.getsockname()[1] > 0
    assert prefork.PreforkTCPServer.workers is None
    assert prefork.PreforkTCPServer.threads == 4


def test_workers_default_to_the_cpu_count() -> None:
    with prefork.PreforkTCPServer(("127.0.0.1", 0), Handler) as server:
        assert server.configured_workers() == os.cpu_count()


def test_the_engine_listens_with_a_real_backlog_unless_the_class_chose_one() -> None:
    class OnStdlibHTTP(prefork.PreforkMixIn, http.server.HTTPServer):
        pass

    class Chosen(prefork.PreforkMixIn, http.server.HTTPServer):
        request_queue_size = 16

    class ChosenBelow(http.server.HTTPServer):
        request_queue_size = 7

    class OnChosenBelow(prefork.PreforkMixIn, ChosenBelow):
        pass

    assert socketserver.TCPServer.request_queue_size == 5
    assert _listen_backlog(OnStdlibHTTP) == socket.SOMAXCONN
    assert _listen_backlog(prefork.PreforkTCPServer) == socket.SOMAXCONN
    assert _listen_backlog(Chosen) == 16
    assert _listen_backlog(OnChosenBelow) == 7


def test_handle_request_outside_the_engine_serves_inline() -> None:
    """Without serve_forever (no workers), handle_request() still works, synchronously."""

    class Echo(prefork.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline())

    with prefork.PreforkTCPServer(("127.0.0.1", 0), Echo, workers=1) as server:
        server.timeout = 10
        with socket.create_connection(server.server_address, timeout=10) as client:
            client.sendall(b"hi\n")
            server.handle_request()
            assert client.recv(100) == b"hi\n"
