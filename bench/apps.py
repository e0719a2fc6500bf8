"""The applications every server in the benchmark serves: same bytes out, no access log.

* :class:`HelloHandler`: an unchanged ``http.server.BaseHTTPRequestHandler`` (HTTP/1.1,
  keep-alive) answering every GET with :data:`BODY`;
* :func:`app`: the same hello as a WSGI application;
* :class:`EchoHandler` / :class:`UDPEchoHandler`: raw TCP and UDP echo, written against the
  standard library's ``socketserver`` so that one class serves on both engines.
"""

from __future__ import annotations

import http.server
import socketserver
from collections.abc import Callable, Iterable
from typing import Any

BODY = b"Hello, world!\n"
CONTENT_TYPE = "text/plain; charset=utf-8"


class HelloHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with :data:`BODY` over HTTP/1.1 keep-alive."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: Any) -> None:
        """No access log, like every other server in the benchmark."""


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The hello WSGI application."""
    start_response("200 OK", [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(BODY)))])
    return [BODY]


class EchoHandler(socketserver.BaseRequestHandler):
    """Sends back whatever the client sends, until it closes the connection."""

    def handle(self) -> None:
        sock = self.request
        while True:
            data = sock.recv(65536)
            if not data:
                return
            sock.sendall(data)


class UDPEchoHandler(socketserver.BaseRequestHandler):
    """Sends each datagram back to its sender."""

    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(data, self.client_address)
