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
``prefork.http.wsgi`` logger, not reported as an error.  Requests rejected as
malformed are logged at debug level too.

The access log is off: ``log_message()`` writes (to standard error, as the
standard library does) only when the server's ``access_log`` attribute is
true.

Socket operations wait at most the handler's ``timeout`` (under the prefork
engine, its ``io_timeout`` when the handler sets none).
"""

from __future__ import annotations

import contextlib
import email.utils
import http
import http.server
import logging
import os
import re
import socket
import ssl
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any
from urllib.parse import unquote_to_bytes

from prefork.core.server import TCPServer
from prefork.engine.keepalive import send_all

__all__ = [
    "ChunkedBodyError",
    "ClientDisconnectedError",
    "FileWrapper",
    "WSGIRequestHandler",
    "WSGIServer",
    "make_server",
]

logger = logging.getLogger("prefork.wsgi")  # public: docs/operations.md, Logging

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
"""The ``exc_info`` argument of ``start_response`` (as returned by ``sys.exc_info()``)."""

StartResponse = Callable[..., Callable[[bytes], None]]
WSGIApplication = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

SERVER_SOFTWARE = "prefork"
"""The ``Server`` header and ``SERVER_SOFTWARE``."""

_SMALL_BODY = 64 * 1024
"""A body up to this size is copied after the head into a single ``sendall``."""

_READ_BLOCK = 1024 * 1024
"""Request bodies are read at most this many bytes per call."""

_MSG_MORE = getattr(socket, "MSG_MORE", 0)

_UNLIMITED = sys.maxsize // 2
"""A limit of 0 (none) in the ``limit_request_*`` settings: no line is this long."""

_MAX_FIELDS = 32768
"""``limit_request_fields`` of 0 (as gunicorn: its greatest value)."""

_MAX_CACHED = 1024
"""Bound of the caches of header names (clients choose the names)."""


class ClientDisconnectedError(ConnectionError):
    """Raised by ``wsgi.input`` when the client closed before sending its whole body."""


class ChunkedBodyError(ValueError):
    """Raised by ``wsgi.input`` when a chunked request body is malformed."""


class _RequestError(Exception):
    """A request that cannot be served: answered with ``status`` and closed."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


# -- request parsing ------------------------------------------------------------------------

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_ABSOLUTE_FORM = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*")

_METHODS: dict[bytes, str] = {
    m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
}
# request version -> (HTTP/1.1 or later, SERVER_PROTOCOL)
_VERSIONS: dict[bytes, tuple[bool, str]] = {
    b"HTTP/1.1": (True, "HTTP/1.1"),
    b"HTTP/1.0": (False, "HTTP/1.0"),
}
# header name as sent -> environ key ("" for a name to drop)
_ENVIRON_KEYS: dict[bytes, str] = {}
_LINE_ENDS = (b"\r\n", b"\n")


def _environ_key(name: bytes) -> str:
    """The environ key for a request header name, ``""`` to drop it; 400 if invalid."""
    key = _ENVIRON_KEYS.get(name)
    if key is not None:
        return key
    if not _TOKEN.fullmatch(name):
        # Also catches whitespace before the colon and obsolete line folding.
        raise _RequestError(400, "invalid header name")
    if b"_" in name:
        key = ""
    else:
        upper = name.decode("ascii").upper().replace("-", "_")
        key = upper if upper in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + upper
    if len(_ENVIRON_KEYS) < _MAX_CACHED:
        _ENVIRON_KEYS[name] = key
    return key


# header line as sent -> (environ key, value); most lines repeat from request to request
_HEADER_LINES: dict[bytes, tuple[str, str]] = {}
_MAX_CACHED_LINE = 256


def _parse_header_line(line: bytes) -> tuple[str, str]:
    """``(environ key, value)`` of a header line; the key is ``""`` for a name to drop."""
    name, colon, value = line.partition(b":")
    if not colon:
        raise _RequestError(400, "header line without a colon")
    key = _environ_key(name)
    value = value.strip(b" \t")
    if b"\r" in value or b"\0" in value:
        raise _RequestError(400, "invalid header value")
    parsed = (key, value.decode("latin-1"))
    if len(line) <= _MAX_CACHED_LINE:
        if len(_HEADER_LINES) >= _MAX_CACHED:
            _HEADER_LINES.clear()  # clients choose the lines: start again rather than grow
        _HEADER_LINES[line] = parsed
    return parsed


def _unquote_path(path: bytes) -> str:
    """Percent-decode a path and return it as a latin-1 str (PEP 3333)."""
    if b"%" in path:
        path = unquote_to_bytes(path)
    return path.decode("latin-1")


def _split_host(host: str, default_port: str) -> tuple[str, str]:
    """``(name, port)`` of a Host header value (``[v6]:port``, ``name:port`` or ``name``)."""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.partition(":")
    return name, port or default_port


def _has_token(value: str, token: str) -> bool:
    """Whether the comma-separated header ``value`` lists ``token`` (lowercase)."""
    value = value.lower()
    if value == token:
        return True
    return token in (part.strip() for part in value.split(","))


# -- response helpers -----------------------------------------------------------------------

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_SPECIAL_RESPONSE = _HOP_BY_HOP | {"content-length", "date", "server"}
_RESPONSE_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# response header name -> lowercase, once validated
_RESPONSE_NAMES: dict[str, str] = {}

_date_cache: tuple[int, str] = (0, "")


def _date_line() -> str:
    """``Date: ...\\r\\n`` for the current second (formatted once a second)."""
    global _date_cache
    now = int(time.time())
    second, line = _date_cache
    if second != now:
        line = f"Date: {email.utils.formatdate(now, usegmt=True)}\r\n"
        _date_cache = (now, line)
    return line


def _response_name(name: str) -> str:
    """The lowercase form of a response header name; ``ValueError`` if it is no token."""
    lname = _RESPONSE_NAMES.get(name)
    if lname is None:
        if not _RESPONSE_TOKEN.fullmatch(name):
            raise ValueError(f"invalid response header name {name!r}")
        lname = name.lower()
        if len(_RESPONSE_NAMES) < _MAX_CACHED:
            _RESPONSE_NAMES[name] = lname
    return lname


def _parse_length(value: str) -> int:
    """A Content-Length value as an int; ``ValueError`` if it is not one."""
    value = value.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise ValueError(f"invalid Content-Length {value!r}")
    return int(value)


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


# Response body framings.
_NONE = 0  # no body is sent (HEAD, 1xx, 204, 304)
_LENGTH = 1  # Content-Length
_CHUNKED = 2  # Transfer-Encoding: chunked
_CLOSE = 3  # delimited by closing the connection


# -- wsgi.input -----------------------------------------------------------------------------


class _Input:
    """``wsgi.input`` base: file-like reads bounded to one request body.

    ``gone`` is set when the client went away while the body was read.
    ``on_first_read``, if set, is called (once) before the first read that
    asks for data: it sends ``100 Continue``.
    """

    __slots__ = ("gone", "on_first_read", "rfile")

    def __init__(self, rfile: Any, on_first_read: Callable[[], None] | None = None) -> None:
        self.rfile = rfile
        self.gone = False
        self.on_first_read = on_first_read

    def read(self, size: int | None = -1) -> bytes:
        """Read up to ``size`` bytes of the body (all of the rest when negative)."""
        return b""

    def readline(self, size: int | None = -1) -> bytes:
        """Read one line of the body (at most ``size`` bytes when given)."""
        return b""

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """Read the remaining lines (stopping once ``hint`` bytes were read, if positive)."""
        lines = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    @property
    def pending(self) -> bool:
        """Whether some of the body is still unread."""
        return False

    def discard(self, limit: int) -> bool:
        """Read and drop the rest of the body if it is at most ``limit`` bytes.

        Returns whether the whole body has now been read (the connection can
        carry another request).
        """
        return True

    def _fire(self) -> None:
        callback = self.on_first_read
        if callback is not None:
            self.on_first_read = None
            callback()

    def _read_raw(self, size: int) -> bytes:
        """``size`` bytes (fewer at EOF).  Large sizes are read a block at a time:
        ``BufferedReader.read(n)`` would allocate ``n`` bytes up front, and the
        client chooses ``n``."""
        try:
            if size <= _READ_BLOCK:
                return self.rfile.read(size)
            parts = []
            while size > 0:
                data = self.rfile.read(min(size, _READ_BLOCK))
                if not data:
                    break
                parts.append(data)
                size -= len(data)
            return b"".join(parts)
        except OSError:
            self.gone = True
            raise

    def _readline_raw(self, size: int) -> bytes:
        try:
            return self.rfile.readline(size)
        except OSError:
            self.gone = True
            raise

    def _disconnected(self) -> ClientDisconnectedError:
        self.gone = True
        return ClientDisconnectedError(
            "the client closed the connection before the end of its body"
        )


class _EmptyInput(_Input):
    """The body of a request without one."""

    __slots__ = ()


_EMPTY_INPUT = _EmptyInput(None)


class _LengthInput(_Input):
    """A body of ``Content-Length`` bytes."""

    __slots__ = ("left",)

    def __init__(
        self, rfile: Any, length: int, on_first_read: Callable[[], None] | None = None
    ) -> None:
        super().__init__(rfile, on_first_read)
        self.left = length

    def _allowance(self, size: int | None) -> int:
        """How many bytes a read of ``size`` may take (0 at the end of the body)."""
        if self.on_first_read is not None and size != 0:
            self._fire()
        left = self.left
        if left <= 0:
            return 0
        return left if size is None or size < 0 or size > left else size

    def read(self, size: int | None = -1) -> bytes:
        """Read up to ``size`` bytes of the body (all of the rest when negative)."""
        n = self._allowance(size)
        if n == 0:
            return b""
        data = self._read_raw(n)
        self.left -= len(data)
        if len(data) < n:
            raise self._disconnected()
        return data

    def readline(self, size: int | None = -1) -> bytes:
        """Read one line of the body (at most ``size`` bytes when given)."""
        n = self._allowance(size)
        if n == 0:
            return b""
        line = self._readline_raw(n)
        self.left -= len(line)
        if len(line) < n and not line.endswith(b"\n"):
            raise self._disconnected()
        return line

    @property
    def pending(self) -> bool:
        """Whether some of the body is still unread."""
        return self.left > 0

    def discard(self, limit: int) -> bool:
        """Read and drop the rest of the body if it is at most ``limit`` bytes."""
        left = self.left
        if left > limit:
            return False
        try:
            while left > 0:
                data = self.rfile.read(min(left, 65536))
                if not data:
                    return False
                left -= len(data)
        except OSError:
            return False
        finally:
            self.left = left
        return True


class _ChunkedInput(_Input):
    """A body in chunked transfer coding, decoded; trailer fields are read and dropped."""

    __slots__ = ("broken", "done", "left", "max_line", "max_trailers")

    def __init__(
        self,
        rfile: Any,
        on_first_read: Callable[[], None] | None = None,
        max_line: int = 8190,
        max_trailers: int = 100,
    ) -> None:
        super().__init__(rfile, on_first_read)
        self.left = 0  # bytes left in the current chunk
        self.done = False
        self.broken = False
        self.max_line = max_line
        self.max_trailers = max_trailers

    def read(self, size: int | None = -1) -> bytes:
        """Read up to ``size`` bytes of the body (all of the rest when negative)."""
        if self.on_first_read is not None and size != 0:
            self._fire()
        want = -1 if size is None or size < 0 else size
        parts = []
        while want != 0 and (self.left or self._next_chunk()):
            n = self.left if want < 0 else min(want, self.left)
            parts.append(self._take(n))
            if want > 0:
                want -= n
        return b"".join(parts)

    def readline(self, size: int | None = -1) -> bytes:
        """Read one line of the body (at most ``size`` bytes when given)."""
        if self.on_first_read is not None and size != 0:
            self._fire()
        want = -1 if size is None or size < 0 else size
        parts = []
        while want != 0 and (self.left or self._next_chunk()):
            n = self.left if want < 0 else min(want, self.left)
            line = self._readline_raw(n)
            if len(line) < n and not line.endswith(b"\n"):
                raise self._disconnected()
            self.left -= len(line)
            if want > 0:
                want -= len(line)
            if not self.left:
                self._end_chunk()
            parts.append(line)
            if line.endswith(b"\n"):
                break
        return b"".join(parts)

    @property
    def pending(self) -> bool:
        """Whether some of the body is still unread."""
        return not self.done

    def discard(self, limit: int) -> bool:
        """Read and drop the rest of the body if it is at most ``limit`` bytes."""
        if self.broken:
            return False
        try:
            while self.left or self._next_chunk():
                if self.left > limit:
                    return False
                limit -= self.left
                self._take(self.left)
        except (OSError, ValueError):
            return False
        return True

    def _take(self, n: int) -> bytes:
        data = self._read_raw(n)
        if len(data) < n:
            raise self._disconnected()
        self.left -= n
        if not self.left:
            self._end_chunk()
        return data

    def _end_chunk(self) -> None:
        """Consume the CRLF that ends a chunk's data."""
        crlf = self._read_raw(2)
        if crlf != b"\r\n":
            if len(crlf) < 2:
                raise self._disconnected()
            raise self._invalid("chunk data not followed by CRLF")

    def _next_chunk(self) -> bool:
        """Read the next chunk's size line; ``False`` at the end of the body."""
        if self.done or self.broken:
            if self.broken:
                raise self._invalid("chunked body already failed")
            return False
        line = self._line()
        size_field = line.split(b";", 1)[0].strip(b" \t")
        if not _HEX.fullmatch(size_field):
            raise self._invalid(f"invalid chunk size line {line[:40]!r}")
        size = int(size_field, 16)
        if size:
            self.left = size
            return True
        for _ in range(self.max_trailers + 1):
            if not self._line():
                self.done = True
                return False
        raise self._invalid("too many trailer fields")

    def _line(self) -> bytes:
        """One line of chunked framing, without its line ending."""
        line = self._readline_raw(self.max_line + 3)
        if not line.endswith(b"\n"):
            if len(line) > self.max_line + 2:
                raise self._invalid("chunk size or trailer line too long")
            raise self._disconnected()
        return line.rstrip(b"\r\n")

    def _invalid(self, detail: str) -> ChunkedBodyError:
        self.broken = True
        return ChunkedBodyError(detail)


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
    each request to standard error.
    """

    allow_reuse_address = True
    application: WSGIApplication | None = None
    access_log: bool = False

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

    # Per request: the request (_prepare), the response (_start_response, _send_head).
    _input: _Input
    _keep_alive: bool
    _chunk_ok: bool
    _head_only: bool
    _expect_continue: bool
    _continue_sent: bool
    _status: str | None
    _code: int
    _header_block: str
    _content_length: int | None
    _has_date: bool
    _has_server: bool
    _app_close: bool
    _headers_sent: bool
    _framing: int
    _sent: int
    _client_gone: bool

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
        self._apply_limits(server)

    def _apply_limits(self, server: Any) -> None:
        """Take the server's ``limit_request_*`` attributes (the command's settings)."""
        line = getattr(server, "limit_request_line", None)
        if line is not None:
            self.max_line = line or _UNLIMITED
        fields = getattr(server, "limit_request_fields", None)
        if fields is not None:
            self.max_headers = fields or _MAX_FIELDS
        size = getattr(server, "limit_request_field_size", None)
        if size is not None:
            self.max_field_size = size or _UNLIMITED

    # -- one request ----------------------------------------------------------------------

    def handle_one_request(self) -> None:
        """Read one request, run the application, and send its response.

        Sets ``close_connection`` to whether the connection must close now.
        """
        self.close_connection = True
        self.command = None  # type: ignore[assignment]
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

    def _read_head(self) -> list[bytes] | None:
        """The request line and header lines, without line endings; ``None`` at EOF.

        Fast path: the whole head is already in the read buffer (the usual
        case), and is taken and split in one go.  Otherwise it is read line by
        line, each line bounded.
        """
        rfile: Any = self.rfile
        max_line = self.max_line
        max_field = self.max_field_size
        peek = getattr(rfile, "peek", None)  # absent if rbufsize is 0
        buffered = peek(1) if peek is not None else b""
        # A head shorter than both limits has no line over either of them.
        end = buffered.find(b"\r\n\r\n", 0, min(max_line, max_field))
        if end > 0 and not buffered.startswith(b"\r\n"):
            head = buffered[:end]
            if head.count(b"\n") == head.count(b"\r\n"):  # no bare LF line endings
                rfile.read(end + 4)
                lines = head.split(b"\r\n")
                if len(lines) > self.max_headers + 1:
                    raise _RequestError(431, "too many header fields")
                return lines

        readline = rfile.readline
        limit = max_line + 3  # the line, CRLF, and one byte more to detect excess
        line = readline(limit)
        if line in _LINE_ENDS:
            line = readline(limit)  # RFC 9112 2.2: ignore an empty line before a request
        if len(line) >= limit:
            raise _RequestError(414, "request line too long")
        if not line.endswith(b"\n"):
            return None  # closed (perhaps mid-line): there is nothing to answer
        lines = [line[:-2] if line.endswith(b"\r\n") else line[:-1]]
        max_headers = self.max_headers
        limit = max_field + 3
        while True:
            line = readline(limit)
            if line in _LINE_ENDS:
                return lines
            if not line.endswith(b"\n"):
                if len(line) >= limit:
                    raise _RequestError(431, "header line too long")
                return None  # closed in the middle of the head
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
            if len(line) > max_field:
                raise _RequestError(431, "header line too long")
            if len(lines) > max_headers:
                raise _RequestError(431, "too many header fields")
            lines.append(line)

    def _read_request(self) -> dict[str, Any] | None:
        """Read and parse a request head into an environ; ``None`` at end of input."""
        lines = self._read_head()
        if lines is None:
            return None
        request_line = lines[0]
        self.raw_requestline = request_line
        if len(request_line) > self.max_line:
            raise _RequestError(414, "request line too long")
        parts = request_line.split(b" ")
        if len(parts) != 3 or _CONTROL.search(request_line):
            raise _RequestError(400, "malformed request line")
        method_b, target, version_b = parts

        method = _METHODS.get(method_b)
        if method is None:
            if not _TOKEN.fullmatch(method_b):
                raise _RequestError(400, "invalid method")
            method = method_b.decode("ascii")
        version = _VERSIONS.get(version_b)
        if version is None:
            match = _VERSION.fullmatch(version_b)
            if match is None:
                raise _RequestError(400, "invalid HTTP version")
            if match.group(1) != b"1":
                raise _RequestError(505, "HTTP version not supported")
            version = (True, version_b.decode("ascii"))
        http11, protocol = version
        self.command = method
        self.request_version = protocol

        raw_uri = target
        if target[:1] != b"/":
            match = _ABSOLUTE_FORM.match(target)
            if match is not None:
                target = target[match.end() :]
                if target[:1] != b"/":
                    target = b"/" + target
            elif target != b"*":
                raise _RequestError(400, "invalid request target")
        if b"#" in target:
            target = target.partition(b"#")[0]
        path, _, query = target.partition(b"?")

        environ = self._connection_environ.copy()
        environ["REQUEST_METHOD"] = method
        environ["PATH_INFO"] = _unquote_path(path)
        environ["QUERY_STRING"] = query.decode("latin-1")
        environ["RAW_URI"] = environ["REQUEST_URI"] = self.path = raw_uri.decode("latin-1")
        environ["SERVER_PROTOCOL"] = protocol
        environ["wsgi.errors"] = sys.stderr

        cached = _HEADER_LINES.get
        for line in lines[1:]:
            parsed = cached(line)
            if parsed is None:
                parsed = _parse_header_line(line)
            key, text = parsed
            if not key:
                continue  # a name with an underscore
            if key in environ:
                environ[key] = f"{environ[key]},{text}"
            else:
                environ[key] = text

        self._prepare(environ, http11)
        return environ

    def _prepare(self, environ: dict[str, Any], http11: bool) -> None:
        """Per-request state from the headers: body reader, keep-alive, 100-continue."""
        length = environ.get("CONTENT_LENGTH")
        coding = environ.get("HTTP_TRANSFER_ENCODING")
        expect = environ.get("HTTP_EXPECT")
        on_first_read = None
        if expect is not None and http11 and expect.lower() == "100-continue":
            on_first_read = self._send_continue
        body: _Input
        if coding is not None:
            if length is not None:
                raise _RequestError(400, "both Transfer-Encoding and Content-Length")
            if not http11:
                raise _RequestError(400, "Transfer-Encoding in an HTTP/1.0 request")
            codings = [c.strip() for c in coding.lower().split(",")]
            if codings[-1] != "chunked":
                raise _RequestError(400, "the last transfer coding is not chunked")
            if len(codings) > 1:
                raise _RequestError(501, "transfer coding not implemented")
            body = _ChunkedInput(self.rfile, on_first_read, self.max_field_size, self.max_headers)
        elif length is not None:
            try:
                size = _parse_length(length)
            except ValueError:
                raise _RequestError(400, "invalid Content-Length") from None
            body = _LengthInput(self.rfile, size, on_first_read) if size else _EMPTY_INPUT
        else:
            body = _EMPTY_INPUT
        environ["wsgi.input"] = self._input = body
        self._expect_continue = body is not _EMPTY_INPUT and on_first_read is not None
        self._continue_sent = False

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
        http11_response = self.protocol_version >= "HTTP/1.1"
        self._keep_alive = keep_alive and http11_response
        self._chunk_ok = http11 and http11_response
        self._head_only = environ["REQUEST_METHOD"] == "HEAD"
        if self._server_from_host:  # a Unix socket: the Host header is all there is
            name, port = _split_host(environ.get("HTTP_HOST", ""), "80")
            environ["SERVER_NAME"] = name
            environ["SERVER_PORT"] = port

    def _serve(self, environ: dict[str, Any]) -> None:
        """Run the application on ``environ`` and send its response."""
        self._status = None
        self._headers_sent = False
        self._framing = _NONE
        self._sent = 0
        self._client_gone = False
        body = self._input
        try:
            app = self.server.application  # type: ignore[attr-defined]
            result = app(environ, self._start_response)
            try:
                self._send_result(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except Exception as exc:
            self._keep_alive = False
            self._failed(exc)
        else:
            if body.pending and (self._expect_unmet() or not body.discard(self.drain_limit)):
                self._keep_alive = False
                self._discard_received()
        finally:
            body.on_first_read = None  # it refers to this handler
        self.close_connection = not self._keep_alive
        if getattr(self.server, "access_log", False):
            self.requestline = self.raw_requestline.decode("latin-1")
            self.log_request(self._code if self._status else 500, self._sent)

    def _failed(self, exc: Exception) -> None:
        """The application (or the client) failed: report it and end the response."""
        if self._client_gone or self._input.gone:
            logger.debug("%s: client went away: %r", self._peer(), exc)
            return
        if isinstance(exc, ChunkedBodyError) and not self._headers_sent:
            self._reject(400, str(exc))
            return
        self.server.handle_error(self.request, self.client_address)
        if self._headers_sent:
            return  # closing the connection tells the client the response is incomplete
        self._status = "500 Internal Server Error"
        self._code = 500
        self._headers_sent = True
        body = b"" if self._head_only else b"Internal Server Error\n"
        head = (
            f"{self.protocol_version} 500 Internal Server Error\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Length: 22\r\n"
            f"Connection: close\r\n{_date_line()}Server: {self.server_version}\r\n\r\n"
        )
        try:
            self.connection.sendall(head.encode("latin-1") + body)
        except OSError as err:
            logger.debug("%s: could not send a 500: %r", self._peer(), err)
            return
        self._sent = len(body)
        self._discard_received()

    def _reject(self, status: int, detail: str) -> None:
        """Answer a request that cannot be served with ``status``; the connection closes."""
        logger.debug("%s: rejected with %d: %s", self._peer(), status, detail)
        reason = _reason(status)
        body = b"" if self.command == "HEAD" else f"{reason}: {detail}\n".encode()
        head = (
            f"{self.protocol_version} {status} {reason}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Connection: close\r\n{_date_line()}Server: {self.server_version}\r\n\r\n"
        )
        try:
            self.connection.sendall(head.encode("latin-1") + body)
        except OSError as err:
            logger.debug("%s: could not send a %d: %r", self._peer(), status, err)
            return
        self._discard_received()
        if getattr(self.server, "access_log", False):
            line = getattr(self, "raw_requestline", b"")[:200]
            self.requestline = line.decode("latin-1")
            self.log_request(status, len(body))

    def _discard_received(self) -> None:
        """Drop the input that has already arrived, before the connection closes.

        Closing a socket with unread input sends RST instead of FIN, and the
        RST can destroy the response before the client has read it.
        """
        sock = self.connection
        try:
            timeout = sock.gettimeout()
            sock.setblocking(False)
        except OSError:
            return
        try:
            for _ in range(16):
                if not sock.recv(65536):
                    break
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(timeout)

    def _peer(self) -> str:
        return str(self.client_address)

    # -- the response ---------------------------------------------------------------------

    def _start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
    ) -> Callable[[bytes], None]:
        """PEP 3333 ``start_response``: check and record the status and headers.

        Returns the ``write()`` callable.  With ``exc_info``, replaces a
        response whose headers are not sent yet, or re-raises the exception
        once they are.
        """
        if exc_info is not None:
            try:
                if self._headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self._status is not None:
            raise AssertionError("start_response() called a second time without exc_info")
        if type(status) is not str:
            raise TypeError(f"status must be a str, not {type(status).__name__}")
        code = status[:3]
        if (
            len(status) < 4
            or status[3] != " "
            or not (code.isascii() and code.isdigit())
            or "\n" in status
            or "\r" in status
        ):
            raise ValueError(f"invalid status {status!r}")
        if type(headers) is not list:
            raise TypeError(f"headers must be a list, not {type(headers).__name__}")
        block = []
        content_length = None
        has_date = has_server = app_close = False
        for item in headers:
            if type(item) is not tuple or len(item) != 2:
                raise TypeError(f"a header must be a (name, value) tuple, not {item!r}")
            name, value = item
            if type(name) is not str or type(value) is not str:
                raise TypeError(f"header names and values must be str: {item!r}")
            lname = _response_name(name)
            if "\n" in value or "\r" in value:
                raise ValueError(f"invalid value for header {name!r}: {value!r}")
            if lname in _SPECIAL_RESPONSE:
                if lname == "content-length":
                    content_length = _parse_length(value)
                elif lname == "date":
                    has_date = True
                elif lname == "server":
                    has_server = True
                else:
                    # Hop-by-hop: the server's business (PEP 3333). Dropped, as
                    # gunicorn does; "Connection: close" is honoured.
                    if lname == "connection" and _has_token(value, "close"):
                        app_close = True
                    continue
            block.append(f"{name}: {value}\r\n")
        self._status = status
        self._code = int(code)
        self._header_block = "".join(block)
        self._content_length = content_length
        self._has_date = has_date
        self._has_server = has_server
        self._app_close = app_close
        return self._write

    def _write(self, data: bytes) -> None:
        """PEP 3333 ``write()``; also sends each block the application's iterable yields."""
        if type(data) is not bytes:
            if isinstance(data, str):
                raise TypeError("response body data must be bytes, not str")
            data = bytes(memoryview(data))
        if not self._headers_sent:
            if self._status is None:
                raise AssertionError("write() or a body block before start_response()")
            if data:
                self._send_head(None, data)
            return
        if not data:
            return
        framing = self._framing
        if framing == _CHUNKED:
            self._send_chunk(data)
        elif framing == _LENGTH:
            room = self._content_length - self._sent  # type: ignore[operator]
            if room > 0:
                if len(data) > room:
                    data = data[:room]
                self._sendall(data)
                self._sent += len(data)
        elif framing == _CLOSE:
            self._sendall(data)
            self._sent += len(data)

    def _send_result(self, result: Iterable[bytes]) -> None:
        """Send the application's body (and the head, unless ``write()`` sent it)."""
        if self._status is not None and not self._headers_sent:
            kind = type(result)
            if kind is list or kind is tuple:
                # The whole body is here: one Content-Length, one sendall.
                body = b"".join(result)
                self._send_head(len(body), body)
                self._finish_response()
                return
            if kind is FileWrapper and self._send_file(result):  # type: ignore[arg-type]
                return
        for data in result:
            if data:
                self._write(data)
                if self._framing == _NONE and self._headers_sent:
                    break  # HEAD, 204, 304: nothing more will be sent
        self._finish_response()

    def _send_head(self, length: int | None, data: bytes) -> None:
        """Choose the framing, then send the head with the first block of the body.

        ``length`` is the length of the whole body when ``data`` is all of it.
        """
        head = self._head(self._choose_framing(length))
        self._headers_sent = True
        framing = self._framing
        if framing == _CHUNKED:
            self._send_chunk(data, head)
            return
        if framing == _NONE:
            data = b""
        elif framing == _LENGTH and len(data) > self._content_length:  # type: ignore[operator]
            data = data[: self._content_length]
        self._sent = len(data)
        if len(data) <= _SMALL_BODY:
            self._sendall(head + data)
        else:
            self._sendall(head)
            self._sendall(data)

    def _send_chunk(self, data: bytes, head: bytes = b"") -> None:
        """Send ``data`` as one chunk (after ``head``, if given)."""
        self._sent += len(data)
        if len(data) <= _SMALL_BODY:
            self._sendall(b"%b%x\r\n%b\r\n" % (head, len(data), data))
        else:
            self._sendall(b"%b%x\r\n" % (head, len(data)))
            self._sendall(data)
            self._sendall(b"\r\n")

    def _choose_framing(self, length: int | None) -> str:
        """Set ``_framing`` and ``_keep_alive``; return the headers that announce them.

        ``length`` is the body's length when it is known in full.  The headers
        are those a GET would get, even when no body is sent (HEAD).
        """
        code = self._code
        no_body = code < 200 or code == 204 or code == 304
        keep_alive = self._keep_alive and not self._app_close
        extra = ""
        if no_body or self._content_length is not None:
            framing = _LENGTH
        elif length is not None:
            framing = _LENGTH
            self._content_length = length
            extra = f"Content-Length: {length}\r\n"
        elif self._chunk_ok:
            framing = _CHUNKED
            extra = "Transfer-Encoding: chunked\r\n"
        else:
            framing = _CLOSE
            keep_alive = False
        if no_body or self._head_only:
            framing = _NONE
        body = self._input
        if keep_alive and (
            self._expect_unmet() or (type(body) is _LengthInput and body.left > self.drain_limit)
        ):
            keep_alive = False  # the request body will not be read: close after the response
        if not keep_alive:
            extra += "Connection: close\r\n"
        elif not self._chunk_ok:
            extra += "Connection: keep-alive\r\n"  # an HTTP/1.0 client that asked for it
        self._framing = framing
        self._keep_alive = keep_alive
        return extra

    def _head(self, extra: str) -> bytes:
        """The status line and headers, encoded."""
        date = "" if self._has_date else _date_line()
        server = "" if self._has_server else f"Server: {self.server_version}\r\n"
        status_line = f"{self.protocol_version} {self._status}\r\n"
        return f"{status_line}{self._header_block}{extra}{date}{server}\r\n".encode("latin-1")

    def _finish_response(self) -> None:
        """End the body: send the head if nothing did, the last chunk, check the length."""
        if self._status is None:
            raise AssertionError("the application returned without calling start_response()")
        if not self._headers_sent:
            self._send_head(0, b"")
        framing = self._framing
        if framing == _CHUNKED:
            self._sendall(b"0\r\n\r\n")
        elif framing == _LENGTH and self._sent < self._content_length:  # type: ignore[operator]
            self._keep_alive = False  # it sent less than it announced: only a close tells

    def _send_file(self, wrapper: FileWrapper) -> bool:
        """Send a regular file with ``sendfile``; ``False`` if it must be read instead."""
        filelike = wrapper.filelike
        if "b" not in getattr(filelike, "mode", "b"):
            return False
        try:
            fd = filelike.fileno()
            offset = filelike.tell()
            st = os.fstat(fd)
        except (AttributeError, OSError, ValueError):
            return False
        if not stat.S_ISREG(st.st_mode):
            return False
        size = max(0, st.st_size - offset)
        head = self._head(self._choose_framing(size))
        self._headers_sent = True
        count = 0
        if self._framing == _LENGTH:
            count = min(size, self._content_length)
        sock = self.connection
        if count and type(sock) is socket.socket:
            # MSG_MORE: the head waits to leave with the file's first bytes.
            self._sendall(head, _MSG_MORE)
        else:
            self._sendall(head)
        if count:
            try:
                sock.sendfile(filelike, offset, count)
            except OSError:
                self._client_gone = True
                raise
            self._sent = count
        self._finish_response()
        return True

    def _sendall(self, data: bytes, flags: int = 0) -> None:
        try:
            if flags:
                self.connection.sendall(data, flags)
            else:
                send_all(self.connection, data)  # no poll() before the write (see there)
        except OSError:
            self._client_gone = True
            raise

    def _send_continue(self) -> None:
        """Tell the client to send its body (on the first read of ``wsgi.input``)."""
        if not self._headers_sent:
            self._sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._continue_sent = True

    def _expect_unmet(self) -> bool:
        """The client expects ``100 Continue`` and has not had it: its body may never come."""
        return self._expect_continue and not self._continue_sent

    # -- logging --------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        """Write a log line to standard error, only if the server's ``access_log`` is true."""
        if getattr(self.server, "access_log", False):
            super().log_message(format, *args)
