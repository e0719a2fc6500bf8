"""Keep-alive HTTP connections that do not hold a thread while idle.

``BaseHTTPRequestHandler.handle()`` loops over ``handle_one_request()`` for
the whole life of a connection, so a thread per connection would let a few
idle keep-alive clients starve everyone else.  For handlers that keep the
standard ``handle()``, the worker instead drives the documented
``handle_one_request()`` itself, one request per job on a pool thread, and
parks the connection in its selector between requests.
"""

from __future__ import annotations

import contextlib
import enum
import time
from typing import Any


class Outcome(enum.Enum):
    """What to do with a connection after serving a request on it."""

    PARK = "park"
    CLOSED = "closed"


def drives_http_connections(server: Any) -> bool:
    """Whether the worker may drive ``server``'s handler request by request.

    True for ``http.server.BaseHTTPRequestHandler`` subclasses that keep its
    ``handle()`` on a server that keeps the default ``finish_request()``: any
    other combination owns its connection and gets a thread for its life.
    """
    import http.server

    handler_class = server.RequestHandlerClass
    if not (
        isinstance(handler_class, type)
        and issubclass(handler_class, http.server.BaseHTTPRequestHandler)
        and handler_class.handle is http.server.BaseHTTPRequestHandler.handle
    ):
        return False
    finish_request = type(server).finish_request
    return getattr(finish_request, "__qualname__", "") == "BaseServer.finish_request"


class HTTPConnection:
    """One HTTP connection: the handler is set up once, then serves request by request."""

    def __init__(self, server: Any, sock: Any, client_address: Any) -> None:
        self.server = server
        self.sock = sock
        self.client_address = client_address
        self.parked_since = time.monotonic()
        self.handler: Any = None

    def fileno(self) -> int:
        """The connection's fd, so a selector can watch it while parked."""
        return self.sock.fileno()

    def serve(self, *, last: bool = False) -> Outcome:
        """Serve the requests that are ready on the connection; run on a pool thread.

        Serves every request already buffered (pipelining) and returns
        :attr:`Outcome.PARK` when the connection waits for its next request, or
        :attr:`Outcome.CLOSED` once it has been finished and shut down.  With
        ``last`` the connection is closed after this request.
        """
        try:
            if self.handler is None:
                self._set_up()
            handler = self.handler
            if last:
                # An HTTP/1.0 status line without "Connection: keep-alive" tells
                # the client this response is the connection's last.
                handler.protocol_version = "HTTP/1.0"
            while True:
                handler.close_connection = True
                handler.handle_one_request()
                if handler.close_connection or last:
                    self.close()
                    return Outcome.CLOSED
                if not self._has_buffered_input():
                    self.parked_since = time.monotonic()
                    return Outcome.PARK
        except Exception:
            self._finish_quietly()
            self.server.handle_error(self.sock, self.client_address)
            self.server.shutdown_request(self.sock)
            return Outcome.CLOSED
        except BaseException:
            self._finish_quietly()
            self.server.shutdown_request(self.sock)
            raise

    def _set_up(self) -> None:
        handler_class = self.server.RequestHandlerClass
        handler = handler_class.__new__(handler_class)
        handler.request = self.sock
        handler.client_address = self.client_address
        handler.server = self.server
        self.handler = handler
        handler.setup()

    def _has_buffered_input(self) -> bool:
        """Whether the next request is already here (buffered or in the socket)."""
        rfile = self.handler.rfile
        timeout = self.sock.gettimeout()
        self.sock.setblocking(False)
        try:
            return bool(rfile.peek(1))
        except (BlockingIOError, OSError):
            return False
        finally:
            self.sock.settimeout(timeout)

    def close(self) -> None:
        """Run the handler's ``finish()`` and shut the connection down."""
        try:
            self._finish()
        finally:
            self.server.shutdown_request(self.sock)

    def _finish(self) -> None:
        if self.handler is not None and hasattr(self.handler, "wfile"):
            self.handler.finish()

    def _finish_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self._finish()
