"""The application the fault tests serve through the real ``prefork`` command.

The tests copy this file into the command's working directory and run, e.g.,
``prefork -b 127.0.0.1:0 -b unix:/tmp/x.sock faultapp:Hello``.

``Hello``
    an HTTP/1.1 keep-alive handler: ``/pid`` answers ``<pid> <generation>``,
    ``/sleep?s=1.5`` the same after sleeping, ``/grow`` keeps 64 MiB more of
    written (so resident) memory alive in the worker and answers ``<pid> <chunks>``.
``Echo``
    a stream handler echoing each line as ``<pid> <line>``.
``DatagramEcho``
    a datagram handler echoing each datagram as ``<pid> <data>``.
"""

from __future__ import annotations

import http.server
import os
import time
import urllib.parse
from typing import Any

import prefork

#: Memory ``/grow`` keeps alive, so that the worker's resident size stays up.
KEPT: list[bytes] = []


class Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: the tests put the server under load."""

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        worker = self.server._prefork_worker.process  # type: ignore[attr-defined]
        if url.path == "/grow":
            KEPT.append(b"\x01" * (64 << 20))
            body = f"{os.getpid()} {len(KEPT)}\n".encode()
        elif url.path in ("/pid", "/sleep"):
            if url.path == "/sleep":
                time.sleep(float(urllib.parse.parse_qs(url.query).get("s", ["1"])[0]))
            body = f"{os.getpid()} {worker.generation}\n".encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Echo(prefork.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(b"%d %s" % (os.getpid(), line))


class DatagramEcho(prefork.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(b"%d %s" % (os.getpid(), data), self.client_address)
