"""prefork's own HTTP/1.1 WSGI server (PEP 3333).

:class:`WSGIServer` holds the application; :class:`WSGIRequestHandler` speaks
HTTP/1.0 and HTTP/1.1 to the client and calls it.  Combine the server with
:class:`prefork.PreforkMixIn` (or :class:`prefork.ThreadingMixIn`) to serve::

    class Server(prefork.PreforkMixIn, WSGIServer):
        workers = 4


    with Server(("127.0.0.1", 8000), WSGIRequestHandler) as server:
        server.set_app(app)
        server.serve_forever()

The handler overrides only ``handle_one_request()``, which serves exactly one
request and sets ``close_connection``.  ``BaseHTTPRequestHandler.handle()``
loops over it under threading servers, while a prefork worker drives it itself
and parks idle keep-alive connections in its selector between requests.

What it does, in short:

* its own request-line and header parser, with bounds: a request line of at
  most ``max_line`` (8190) bytes (else 414), at most ``max_headers`` (100)
  header fields (else 431), each header line at most ``max_field_size``
  (8190) bytes (else 431); the server's ``limit_request_line``,
  ``limit_request_fields`` and ``limit_request_field_size`` attributes, when
  set, replace them per connection (0 is no limit for the two sizes, 32768
  fields for the count); a malformed request gets 400 (505 for an HTTP major
  version other than 1, 501 for transfer codings besides chunked) and the connection closes;
* keep-alive by default for HTTP/1.1 (unless ``Connection: close``), for
  HTTP/1.0 only with ``Connection: keep-alive``; pipelined requests are served
  in order;
* the environ of PEP 3333 with nothing invented: ``CONTENT_TYPE`` and
  ``CONTENT_LENGTH`` only when the request has them; header fields whose name
  holds an underscore are dropped (as gunicorn does: ``X_Forwarded_For`` would
  otherwise be indistinguishable from ``X-Forwarded-For``); repeated fields
  are joined with ``,``; ``RAW_URI`` and ``REQUEST_URI`` hold the request
  target as sent;
* ``wsgi.input`` is bounded to the request body (Content-Length or chunked,
  decoded transparently, trailers read and discarded) and sends
  ``100 Continue`` when the application first reads it, if the client asked
  (a client still waiting for it when the response is sent is closed after
  it).  It raises :class:`ClientDisconnectedError` if the client closes before
  the end of its body, and :class:`ChunkedBodyError` for a malformed chunked
  body (answered with 400 if the application lets it through);
* response framing: a Content-Length given by the application is honoured (no
  more is sent; if less is, the connection closes); a body returned as a list
  or tuple gets a Content-Length; otherwise HTTP/1.1 clients get chunked
  encoding and HTTP/1.0 clients a body delimited by closing the connection.
  ``Date`` and ``Server`` are added unless the application set them.
  Hop-by-hop headers from the application are dropped (as gunicorn does), but
  ``Connection: close`` is honoured;
* the head and a small body leave in one ``sendall``; a file returned through
  ``wsgi.file_wrapper`` goes out with ``socket.sendfile``;
* after the response, an unread request body of up to ``drain_limit`` (64 KiB)
  bytes is read and discarded to keep the connection; a larger one closes it.

Errors: an exception from the application is reported through the server's
``handle_error(request, client_address)`` hook, the ``socketserver``
convention (override it to log differently).  Before the response has
started, the client gets a short ``500 Internal Server Error``; after, the
connection is closed.  A client that goes away (reset, broken pipe, timeout,
EOF in the middle of its request body) is logged at debug level on the
``prefork.wsgi`` logger, not reported as an error.  Requests rejected as
malformed are logged at debug level too.

The access log is off: ``log_message()`` writes (to standard error, as the
standard library does) only when the server's ``access_log`` attribute is
true.

Socket operations wait at most the handler's ``timeout`` (under the prefork
engine, its ``io_timeout`` when the handler sets none).

This module is the WSGI adapter; the HTTP/1.1 it speaks is in
:mod:`prefork.http.parser` (the request head), :mod:`prefork.http.body` (the
request body) and :mod:`prefork.http.response` (the response).
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prefork.core.server import TCPServer
from prefork.http.access_log import DEFAULT_FORMAT, AccessLog, access_log_for
from prefork.http.body import _EMPTY_INPUT, ChunkedBodyError, ClientDisconnectedError, _Input
from prefork.http.forwarded import DEFAULT_ALLOW, TrustedProxies, apply_forwarded
from prefork.http.parser import (
    _has_token,
    _RequestError,
    _split_host,
    add_header_fields,
    parse_request_line,
    read_head,
    request_body,
    request_environ,
    request_limits,
)
from prefork.http.response import (
    _NONE,
    ResponseWriter,
    _reason,
    discard_received,
    error_response,
)
from prefork.http.response import ExcInfo as ExcInfo  # the start_response argument type

__all__ = [
    "ChunkedBodyError",
    "ClientDisconnectedError",
    "FileWrapper",
    "WSGIRequestHandler",
    "WSGIServer",
    "make_server",
]

logger = logging.getLogger("prefork.wsgi")  # public: docs/operations.md, Logging

StartResponse = Callable[..., Callable[[bytes], None]]
WSGIApplication = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

SERVER_SOFTWARE = "prefork"
"""The ``Server`` header and ``SERVER_SOFTWARE``."""

_INTERNAL_ERROR = b"Internal Server Error\n"


# -- wsgi.file_wrapper ----------------------------------------------------------------------


class FileWrapper:
    """``wsgi.file_wrapper``: iterate over a file in blocks of ``blksize`` bytes.

    Returned by the application as its body, a wrapper around a regular file
    opened in binary mode is sent with ``socket.sendfile`` (from the file's
    current position); anything else is read block by block.  ``close()``
    closes the file.
    """

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration

    def close(self) -> None:
        """Close the file, if it can be closed."""
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()


# -- the server -----------------------------------------------------------------------------


class WSGIServer(TCPServer):
    """A TCP server holding a WSGI application for :class:`WSGIRequestHandler`.

    Set the application with :meth:`set_app` (it is kept as ``application``).
    ``access_log`` (class attribute, default ``False``) makes the handler log
    each request to standard error, as ``http.server`` does; the access log
    proper is the ``prefork.access`` logger's (:mod:`prefork.http.access_log`),
    in ``access_log_format``.  ``forwarded_allow_ips`` names the proxies whose
    ``X-Forwarded-*`` headers are believed (:mod:`prefork.http.forwarded`).
    """

    allow_reuse_address = True
    application: WSGIApplication | None = None
    access_log: bool = False
    access_log_format: str = DEFAULT_FORMAT
    forwarded_allow_ips: str = DEFAULT_ALLOW

    def set_app(self, application: WSGIApplication) -> None:
        """Set the WSGI application to serve."""
        self.application = application

    def get_app(self) -> WSGIApplication | None:
        """The WSGI application served."""
        return self.application


def make_server(
    host: str,
    port: int,
    app: WSGIApplication,
    server_class: type[WSGIServer] = WSGIServer,
    handler_class: type[WSGIRequestHandler] | None = None,
) -> WSGIServer:
    """A ``server_class`` listening on ``(host, port)`` and serving ``app``."""
    server = server_class((host, port), handler_class or WSGIRequestHandler)
    server.set_app(app)
    return server


def _trusted_proxies(server: Any) -> TrustedProxies:
    """The server's ``forwarded_allow_ips``, parsed once per value."""
    spec = getattr(server, "forwarded_allow_ips", DEFAULT_ALLOW)
    cached = getattr(server, "_prefork_trusted_proxies", None)
    if cached is None or cached[0] != spec:
        cached = (spec, TrustedProxies(spec))
        with contextlib.suppress(AttributeError):
            server._prefork_trusted_proxies = cached
    return cached[1]


def _server_environ(server: Any) -> dict[str, Any]:
    """The environ entries that are the same for every request to ``server``."""
    address = server.server_address
    environ: dict[str, Any] = {
        "SCRIPT_NAME": "",
        "SERVER_SOFTWARE": SERVER_SOFTWARE,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "wsgi.file_wrapper": FileWrapper,
    }
    if isinstance(address, tuple) and len(address) >= 2:
        environ["SERVER_NAME"] = str(address[0])
        environ["SERVER_PORT"] = str(address[1])
    return environ


class WSGIRequestHandler(http.server.BaseHTTPRequestHandler):
    """Serve HTTP/1.0 and HTTP/1.1 requests to the server's WSGI ``application``.

    :meth:`handle_one_request` serves exactly one request and sets
    ``close_connection``; ``handle()`` is the standard library's loop over it.
    Class attributes: ``max_line`` (bytes in the request line, without the
    line ending), ``max_field_size`` (bytes in each header line, and in each
    chunk-size or trailer line), ``max_headers`` (header fields per
    request), ``drain_limit`` (the most bytes of an unread request body read
    and dropped to keep the connection), ``timeout`` (seconds a socket
    operation may wait, ``None`` for no limit), ``protocol_version``
    (``"HTTP/1.0"`` answers every request as the connection's last).
    """

    protocol_version = "HTTP/1.1"
    server_version = SERVER_SOFTWARE
    max_line = 8190
    max_field_size = 8190
    max_headers = 100
    drain_limit = 64 * 1024

    # Per connection, set by setup().
    _connection_environ: dict[str, Any]
    _server_from_host: bool
    _writer: ResponseWriter
    _access_log: AccessLog | None
    _proxy: TrustedProxies | None  # the peer's proxies, when the peer is one of them
    # Per request, set by _prepare().
    _input: _Input

    def setup(self) -> None:
        """Set up the connection's files, ``TCP_NODELAY`` and its environ entries."""
        super().setup()
        sock = self.connection
        if getattr(sock, "family", None) in (socket.AF_INET, socket.AF_INET6):
            # Head and body may leave in separate writes: never wait for a delayed ACK.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server = self.server
        base = getattr(server, "_prefork_wsgi_environ", None)
        if base is None:
            base = _server_environ(server)
            with contextlib.suppress(AttributeError):
                server._prefork_wsgi_environ = base  # type: ignore[attr-defined]
        environ = base.copy()
        client = self.client_address
        if isinstance(client, tuple) and len(client) >= 2:
            environ["REMOTE_ADDR"] = str(client[0])
            environ["REMOTE_PORT"] = str(client[1])
        elif isinstance(client, bytes):
            environ["REMOTE_ADDR"] = client.decode("utf-8", "surrogateescape")
        else:
            environ["REMOTE_ADDR"] = str(client or "")
        if isinstance(sock, ssl.SSLSocket):  # --certfile: PEP 3333's scheme and CGI's HTTPS
            environ["wsgi.url_scheme"] = "https"
            environ["HTTPS"] = "on"
        self._connection_environ = environ
        self._server_from_host = "SERVER_NAME" not in environ
        self.max_line, self.max_headers, self.max_field_size = request_limits(
            server, self.max_line, self.max_headers, self.max_field_size
        )
        self._writer = ResponseWriter(sock, self.server_version, self.drain_limit)
        self._access_log = access_log_for(server)
        proxies = _trusted_proxies(server)
        self._proxy = proxies if proxies.trusts_peer(client) else None

    # -- one request ----------------------------------------------------------------------

    def handle_one_request(self) -> None:
        """Read one request, run the application, and send its response.

        Sets ``close_connection`` to whether the connection must close now.
        """
        self.close_connection = True
        self.command = None  # type: ignore[assignment]
        access_log = self._access_log
        started = time.time() if access_log is not None else 0.0
        try:
            environ = self._read_request()
        except _RequestError as exc:
            self._reject(exc.status, exc.detail)
            return
        except OSError as exc:
            logger.debug("%s: connection lost while reading a request: %r", self._peer(), exc)
            return
        if environ is not None:
            self._serve(environ)
            if access_log is not None:
                writer = self._writer
                code = writer.code if writer.status else 500
                access_log.log(environ, code, writer.sent, writer.headers, started)

    def _read_request(self) -> dict[str, Any] | None:
        """Read and parse a request head into an environ; ``None`` at end of input."""
        lines = read_head(self.rfile, self.max_line, self.max_field_size, self.max_headers)
        if lines is None:
            return None
        request_line = lines[0]
        self.raw_requestline = request_line
        method, target, protocol, http11 = parse_request_line(request_line, self.max_line)
        self.command = method
        self.request_version = protocol
        environ = request_environ(self._connection_environ, method, target, protocol)
        self.path = environ["RAW_URI"]
        add_header_fields(environ, lines)
        if self._proxy is not None:
            problem = apply_forwarded(environ, self._proxy)
            if problem is not None:
                raise _RequestError(400, problem)
        self._prepare(environ, http11)
        return environ

    def _prepare(self, environ: dict[str, Any], http11: bool) -> None:
        """Per-request state from the headers: body reader, keep-alive, 100-continue."""
        writer = self._writer
        expect = environ.get("HTTP_EXPECT")
        on_first_read = None
        if expect is not None and http11 and expect.lower() == "100-continue":
            on_first_read = writer.send_continue
        body = request_body(
            environ, http11, self.rfile, on_first_read, self.max_field_size, self.max_headers
        )
        environ["wsgi.input"] = self._input = body

        connection = environ.get("HTTP_CONNECTION")
        if connection is None:
            keep_alive = http11
        else:
            connection = connection.lower()
            if connection == "keep-alive":
                keep_alive = True
            elif connection == "close":
                keep_alive = False
            elif http11:
                keep_alive = not _has_token(connection, "close")
            else:
                keep_alive = _has_token(connection, "keep-alive")
        protocol_version = self.protocol_version
        http11_response = protocol_version >= "HTTP/1.1"
        writer.begin(
            body,
            keep_alive and http11_response,
            http11 and http11_response,
            environ["REQUEST_METHOD"] == "HEAD",
            body is not _EMPTY_INPUT and on_first_read is not None,
            protocol_version,
        )
        if self._server_from_host:  # a Unix socket: the Host header is all there is
            name, port = _split_host(environ.get("HTTP_HOST", ""), "80")
            environ["SERVER_NAME"] = name
            environ["SERVER_PORT"] = port

    def _serve(self, environ: dict[str, Any]) -> None:
        """Run the application on ``environ`` and send its response."""
        writer = self._writer
        body = self._input
        try:
            app = self.server.application  # type: ignore[attr-defined]
            result = app(environ, writer.start_response)
            try:
                self._send_result(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except Exception as exc:
            writer.keep_alive = False
            self._failed(exc)
        else:
            if body.pending and (writer.expect_unmet() or not body.discard(self.drain_limit)):
                writer.keep_alive = False
                discard_received(self.connection)
        finally:
            body.on_first_read = None  # it refers to the writer
        self.close_connection = not writer.keep_alive
        if getattr(self.server, "access_log", False):
            self.requestline = self.raw_requestline.decode("latin-1")
            self.log_request(writer.code if writer.status else 500, writer.sent)

    def _send_result(self, result: Iterable[bytes]) -> None:
        """Send the application's body (and the head, unless ``write()`` sent it)."""
        writer = self._writer
        if writer.status is not None and not writer.headers_sent:
            kind = type(result)
            if kind is list or kind is tuple:
                writer.send_whole(b"".join(result))  # the whole body is here
                return
            if kind is FileWrapper and writer.send_file(result.filelike):  # type: ignore[attr-defined]
                return
        write = writer.write
        for data in result:
            if data:
                write(data)
                if writer.framing == _NONE and writer.headers_sent:
                    break  # HEAD, 204, 304: nothing more will be sent
        writer.finish()

    def _failed(self, exc: Exception) -> None:
        """The application (or the client) failed: report it and end the response."""
        writer = self._writer
        if writer.client_gone or self._input.gone:
            logger.debug("%s: client went away: %r", self._peer(), exc)
            return
        if isinstance(exc, ChunkedBodyError) and not writer.headers_sent:
            self._reject(400, str(exc))
            return
        self.server.handle_error(self.request, self.client_address)
        if writer.headers_sent:
            return  # closing the connection tells the client the response is incomplete
        writer.status = "500 Internal Server Error"
        writer.code = 500
        writer.headers_sent = True
        body = b"" if writer.head_only else _INTERNAL_ERROR
        if self._send_error(500, body, len(_INTERNAL_ERROR)):
            writer.sent = len(body)

    def _reject(self, status: int, detail: str) -> None:
        """Answer a request that cannot be served with ``status``; the connection closes."""
        logger.debug("%s: rejected with %d: %s", self._peer(), status, detail)
        body = b"" if self.command == "HEAD" else f"{_reason(status)}: {detail}\n".encode()
        if not self._send_error(status, body):
            return
        if getattr(self.server, "access_log", False):
            line = getattr(self, "raw_requestline", b"")[:200]
            self.requestline = line.decode("latin-1")
            self.log_request(status, len(body))

    def _send_error(self, status: int, body: bytes, length: int | None = None) -> bool:
        """Send an error response whole, then drop the input received; ``False`` if it failed."""
        response = error_response(self.protocol_version, self.server_version, status, body, length)
        try:
            self.connection.sendall(response)
        except OSError as err:
            logger.debug("%s: could not send a %d: %r", self._peer(), status, err)
            return False
        discard_received(self.connection)
        return True

    def _peer(self) -> str:
        return str(self.client_address)

    # -- logging --------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        """Write a log line to standard error, only if the server's ``access_log`` is true."""
        if getattr(self.server, "access_log", False):
            super().log_message(format, *args)
