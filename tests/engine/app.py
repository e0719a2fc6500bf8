"""A prefork server program for the end-to-end tests, built from command-line options.

Run it as ``python tests/engine/app.py --kind http --workers 2`` (or ``python -m
tests.engine.app`` from the repository root).  It binds, prints one line to stdout::

    LISTENING 127.0.0.1 41234        (or: LISTENING /path/to/socket)

then runs ``serve_forever()``.  It exits 0 after a normal stop; when workers keep
failing to boot it prints ``prefork: <reason>`` on stderr and exits 1.  Every log
line on stderr carries the pid of the process that wrote it.

Kinds of server:

``http``
    ``http.server.HTTPServer`` with an HTTP/1.1 keep-alive handler:
    ``/pid`` answers ``<pid> <generation>``; ``/sleep?s=1.5`` the same after
    sleeping; ``/hang`` never answers; ``/burn`` spins in C code holding the GIL
    (the worker's own loop cannot run); ``/boom`` raises in the handler.
``tcp-echo``, ``udp-echo``, ``unix-dgram-echo``
    echo servers that answer ``<pid> <data>``.
``xmlrpc``
    ``SimpleXMLRPCServer`` with ``pid()`` and ``sleep(s)``.
``wsgiref``
    ``wsgiref.simple_server.WSGIServer`` with an app answering ``<pid> <generation>``.
"""

from __future__ import annotations

import argparse
import http.server
import logging
import os
import sys
import threading
import time
import urllib.parse
import wsgiref.simple_server
import xmlrpc.server
from typing import Any

import prefork

logger = logging.getLogger("app")

KINDS = ("http", "tcp-echo", "udp-echo", "unix-dgram-echo", "xmlrpc", "wsgiref")


def generation_of(server: Any) -> int:
    """The generation of the worker this runs in (0 outside a worker)."""
    worker = getattr(server, "_prefork_worker", None)
    return worker.process.generation if worker is not None else 0


def burn_holding_the_gil() -> int:
    """Spin in C code that never releases the GIL (for hours): the worker's loop starves."""
    return sum(range(10**15))


class AppHTTPHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler with a few test endpoints."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: the tests put the servers under load."""

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path == "/sleep":
            seconds = float(query.get("s", ["1"])[0])
            logger.info("request %s: sleeping %gs", self.path, seconds)
            time.sleep(seconds)
            logger.info("request %s: slept", self.path)
        elif url.path == "/hang":
            logger.warning("request /hang: hanging forever")
            threading.Event().wait()
        elif url.path == "/burn":
            logger.warning("request /burn: burning CPU holding the GIL")
            burn_holding_the_gil()
        elif url.path == "/big":
            size = int(query.get("n", ["8388608"])[0])
            logger.info("request /big: sending %d bytes", size)
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            try:
                self.wfile.write(b"x" * size)
            except OSError as exc:
                logger.info("request /big: write failed: %s", type(exc).__name__)
                raise
            logger.info("request /big: sent")
            return
        elif url.path == "/boom":
            logger.warning("request /boom: raising")
            raise RuntimeError("boom (test)")
        elif url.path != "/pid":
            self.send_error(404)
            return
        body = f"{os.getpid()} {generation_of(self.server)}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class EchoStreamHandler(prefork.StreamRequestHandler):
    """Echo each line as ``<pid> <line>``."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(b"%d %s" % (os.getpid(), line))


class EchoDatagramHandler(prefork.BaseRequestHandler):
    """Echo each datagram as ``<pid> <data>``."""

    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(b"%d %s" % (os.getpid(), data), self.client_address)


class QuietWSGIRequestHandler(wsgiref.simple_server.WSGIRequestHandler):
    """No access log."""

    def log_message(self, format: str, *args: Any) -> None:
        """Silent."""


def make_server_class(base: type, options: argparse.Namespace) -> type:
    """``PreforkMixIn`` over ``base``, with hooks that log and simulate boot trouble."""

    class AppServer(prefork.PreforkMixIn, base):  # type: ignore[misc, valid-type]
        def when_ready(self) -> None:
            logger.info("when_ready")

        def pre_fork(self, worker: Any) -> None:
            logger.debug("pre_fork %r", worker)

        def post_fork(self, worker: Any) -> None:
            logger.info("post_fork %r", worker)
            if options.boot_delay:
                time.sleep(options.boot_delay)
            if options.crash_on_boot:
                raise RuntimeError("crash on boot (test)")

        def worker_exit(self, worker: Any) -> None:
            logger.info("worker_exit %r", worker)

        def on_reload(self) -> None:
            logger.info("on_reload")

    AppServer.__name__ = AppServer.__qualname__ = f"Prefork{base.__name__}"
    return AppServer


def build_server(options: argparse.Namespace) -> Any:
    """Bind the server the options describe."""
    settings = {
        "workers": options.workers,
        "threads": options.threads,
        "worker_timeout": options.worker_timeout,
        "graceful_timeout": options.graceful_timeout,
        "keepalive_timeout": options.keepalive_timeout,
        "header_timeout": options.header_timeout,
        "io_timeout": options.io_timeout,
        "max_requests": options.max_requests,
        "max_requests_jitter": options.max_requests_jitter,
        "rolling_reload": options.rolling,
        "max_boot_failures": options.max_boot_failures,
        "proc_name": "engine-test",
    }
    inet = (options.host, options.port)
    kind = options.kind
    if kind == "http":
        return make_server_class(http.server.HTTPServer, options)(inet, AppHTTPHandler, **settings)
    if kind == "tcp-echo":
        return make_server_class(prefork.TCPServer, options)(inet, EchoStreamHandler, **settings)
    if kind == "udp-echo":
        cls = make_server_class(prefork.UDPServer, options)
        return cls(inet, EchoDatagramHandler, **settings)
    if kind == "unix-dgram-echo":
        cls = make_server_class(prefork.UnixDatagramServer, options)
        return cls(options.path, EchoDatagramHandler, **settings)
    if kind == "xmlrpc":
        cls = make_server_class(xmlrpc.server.SimpleXMLRPCServer, options)
        server = cls(inet, logRequests=False, allow_none=True, **settings)
        server.register_function(lambda: [os.getpid(), generation_of(server)], "pid")
        server.register_function(lambda s: time.sleep(s) or os.getpid(), "sleep")
        return server
    if kind == "wsgiref":
        cls = make_server_class(wsgiref.simple_server.WSGIServer, options)
        server = cls(inet, QuietWSGIRequestHandler, **settings)

        def app(environ: Any, start_response: Any) -> list[bytes]:
            body = f"{os.getpid()} {generation_of(server)}\n".encode()
            start_response("200 OK", [("Content-Length", str(len(body)))])
            return [body]

        server.set_app(app)
        return server
    raise ValueError(kind)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="prefork end-to-end test server")
    parser.add_argument("--kind", choices=KINDS, default="http")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--path", help="socket path (unix-dgram-echo)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--worker-timeout", type=float, default=30.0)
    parser.add_argument("--graceful-timeout", type=float, default=10.0)
    parser.add_argument("--keepalive-timeout", type=float, default=5.0)
    parser.add_argument("--header-timeout", type=float, default=30.0)
    parser.add_argument("--io-timeout", type=float, default=30.0)
    parser.add_argument("--max-requests", type=int, default=0)
    parser.add_argument("--max-requests-jitter", type=int, default=0)
    parser.add_argument("--max-boot-failures", type=int, default=10)
    parser.add_argument("--boot-delay", type=float, default=0.0, help="post_fork sleeps this")
    parser.add_argument("--crash-on-boot", action="store_true", help="post_fork raises")
    parser.add_argument("--rolling", action="store_true", help="rolling_reload")
    parser.add_argument("--log-file", help="also log to this file (reopened on USR1)")
    options = parser.parse_args(argv)
    if options.kind == "unix-dgram-echo" and not options.path:
        parser.error("--path is required for unix-dgram-echo")
    return options


def configure_logging(log_file: str | None = None) -> None:
    formatter = logging.Formatter(
        "%(asctime)s.%(msecs)03d pid=%(process)d %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.addHandler(handler)
    if log_file:
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    root.setLevel(logging.INFO)
    # "spawned" lines let the tests follow how many workers exist at each moment.
    logging.getLogger("prefork.master").setLevel(logging.DEBUG)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    configure_logging(options.log_file)
    server = build_server(options)
    address = server.server_address
    if isinstance(address, tuple):
        print(f"LISTENING {address[0]} {address[1]}", flush=True)
    else:
        print(f"LISTENING {address}", flush=True)
    try:
        server.serve_forever()
    except prefork.BootError as exc:
        print("prefork: " + " ".join(str(exc).split()), file=sys.stderr, flush=True)
        return 1
    finally:
        server.server_close()
    logger.info("master exiting normally")
    return 0


if __name__ == "__main__":
    sys.exit(main())
