"""The response: status and header checks, framing, the head, the body, and error responses.

A :class:`ResponseWriter` belongs to one connection and writes one response at
a time.  It chooses the framing of the body (none, ``Content-Length``, chunked,
or delimited by closing the connection), builds the head, sends the body in
chunks or with ``sendfile``, sends ``100 Continue`` when the request body is
first read; :func:`error_response` builds every error response.
"""

from __future__ import annotations

import contextlib
import email.utils
import http
import os
import re
import socket
import stat
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from prefork.engine.keepalive import send_all
from prefork.http.body import _Input, _LengthInput
from prefork.http.parser import _MAX_CACHED, _has_token, _parse_length

__all__ = ["ExcInfo", "ResponseWriter", "discard_received", "error_response"]

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
"""The ``exc_info`` argument of ``start_response`` (as returned by ``sys.exc_info()``)."""

_SMALL_BODY = 64 * 1024
"""A body up to this size is copied after the head into a single ``sendall``."""

_MSG_MORE = getattr(socket, "MSG_MORE", 0)

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


_CheckedHeaders = tuple[str, int | None, bool, bool, bool]

# The headers of a response, as a tuple -> what _check_headers made of them. Most
# applications send the same few header lists again and again.
_CHECKED_HEADERS: dict[tuple[Any, ...], _CheckedHeaders] = {}
_MAX_CHECKED = 256


# status line text -> its code, once checked
_STATUS_CODES: dict[str, int] = {}


def _status_code(status: Any) -> int:
    """The code of a ``start_response`` status, checked; ``TypeError``/``ValueError`` if bad."""
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
    number = int(code)
    if len(_STATUS_CODES) < _MAX_CACHED:
        _STATUS_CODES[status] = number
    return number


def _check_headers(headers: list[tuple[str, str]]) -> _CheckedHeaders:
    """Check the application's response headers (a list already checked is looked up).

    Returns the header block to send, the Content-Length the application set,
    whether it set Date, Server, and whether it asked for ``Connection: close``
    (hop-by-hop headers are dropped from the block).
    """
    try:
        key = tuple(headers)
        checked = _CHECKED_HEADERS.get(key)
    except TypeError:  # an unhashable item: no header; the check below says why
        key, checked = None, None
    if checked is not None:  # equal to a list that passed (str and tuple subclasses included)
        return checked
    checked = _check_header_items(headers)
    if key is not None:
        if len(_CHECKED_HEADERS) >= _MAX_CHECKED:
            _CHECKED_HEADERS.clear()  # per-response values (cookies, ETags): start again
        _CHECKED_HEADERS[key] = checked
    return checked


def _check_header_items(headers: list[tuple[str, str]]) -> _CheckedHeaders:
    """:func:`_check_headers` without the cache."""
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
    return "".join(block), content_length, has_date, has_server, app_close


def error_response(
    protocol_version: str, server_version: str, status: int, body: bytes, length: int | None = None
) -> bytes:
    """A whole plain-text error response that announces ``Connection: close``.

    ``length`` is the Content-Length to announce when it is not that of
    ``body`` (the body a GET would get, left out for a HEAD).
    """
    head = (
        f"{protocol_version} {status} {_reason(status)}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n"
        f"Connection: close\r\n{_date_line()}Server: {server_version}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def discard_received(sock: Any) -> None:
    """Drop the input that has already arrived on ``sock``, before the connection closes.

    Closing a socket with unread input sends RST instead of FIN, and the
    RST can destroy the response before the client has read it.
    """
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


class ResponseWriter:
    """Writes the responses of one connection, one request at a time.

    :meth:`begin` starts a request; :meth:`start_response` and the ``write()``
    callable it returns are those of PEP 3333; :meth:`send_whole`,
    :meth:`send_file` and :meth:`finish` send the body the application
    returned.  After the response, ``keep_alive`` tells whether the connection
    may carry another request, ``code`` and ``sent`` what was answered.

    Its size: every method shares the state of the response in flight, on the
    per-request hot path; split in two, each method would reach that state
    through a second object.
    """

    connection: Any
    protocol_version: str
    server_version: str
    drain_limit: int
    # Per request: the request (begin), the response (start_response, _send_head).
    input: _Input
    keep_alive: bool
    chunk_ok: bool
    head_only: bool
    expect_continue: bool
    continue_sent: bool
    status: str | None
    code: int
    headers: list[tuple[str, str]]
    header_block: str
    content_length: int | None
    has_date: bool
    has_server: bool
    app_close: bool
    headers_sent: bool
    framing: int
    sent: int
    client_gone: bool

    def __init__(self, connection: Any, server_version: str, drain_limit: int) -> None:
        self.connection = connection
        self.server_version = server_version
        self.drain_limit = drain_limit
        self.status = None
        self.headers_sent = False

    def begin(
        self,
        body: _Input,
        keep_alive: bool,
        chunk_ok: bool,
        head_only: bool,
        expect_continue: bool,
        protocol_version: str,
    ) -> None:
        """Start the response to a request whose body is read through ``body``.

        ``keep_alive`` is whether the request allows another one after it,
        ``chunk_ok`` whether the response may be chunked, ``expect_continue``
        whether the client waits for ``100 Continue``; ``protocol_version``
        is that of the status line.
        """
        self.input = body
        self.keep_alive = keep_alive
        self.chunk_ok = chunk_ok
        self.head_only = head_only
        self.expect_continue = expect_continue
        self.continue_sent = False
        self.protocol_version = protocol_version
        self.status = None
        self.headers_sent = False
        self.framing = _NONE
        self.sent = 0
        self.client_gone = False

    def start_response(
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
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response() called a second time without exc_info")
        code = _STATUS_CODES.get(status) if type(status) is str else None
        if code is None:
            code = _status_code(status)
        if type(headers) is not list:
            raise TypeError(f"headers must be a list, not {type(headers).__name__}")
        block, content_length, has_date, has_server, app_close = _check_headers(headers)
        self.status = status
        self.code = code
        self.headers = headers
        self.header_block = block
        self.content_length = content_length
        self.has_date = has_date
        self.has_server = has_server
        self.app_close = app_close
        return self.write

    def write(self, data: bytes) -> None:
        """PEP 3333 ``write()``; also sends each block the application's iterable yields."""
        if type(data) is not bytes:
            if isinstance(data, str):
                raise TypeError("response body data must be bytes, not str")
            data = bytes(memoryview(data))
        if not self.headers_sent:
            if self.status is None:
                raise AssertionError("write() or a body block before start_response()")
            if data:
                self._send_head(None, data)
            return
        if not data:
            return
        framing = self.framing
        if framing == _CHUNKED:
            self._send_chunk(data)
        elif framing == _LENGTH:
            room = self.content_length - self.sent  # type: ignore[operator]
            if room > 0:
                if len(data) > room:
                    data = data[:room]
                self._sendall(data)
                self.sent += len(data)
        elif framing == _CLOSE:
            self._sendall(data)
            self.sent += len(data)

    def send_whole(self, body: bytes) -> None:
        """Send the head and ``body``, the whole of the body: one Content-Length, one sendall."""
        self._send_head(len(body), body)
        self.finish()

    def finish(self) -> None:
        """End the body: send the head if nothing did, the last chunk, check the length."""
        if self.status is None:
            raise AssertionError("the application returned without calling start_response()")
        if not self.headers_sent:
            self._send_head(0, b"")
        framing = self.framing
        if framing == _CHUNKED:
            self._sendall(b"0\r\n\r\n")
        elif framing == _LENGTH and self.sent < self.content_length:  # type: ignore[operator]
            self.keep_alive = False  # it sent less than it announced: only a close tells

    def send_file(self, filelike: Any) -> bool:
        """Send a regular file with ``sendfile``; ``False`` if it must be read instead."""
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
        self.headers_sent = True
        count = 0
        if self.framing == _LENGTH:
            count = min(size, self.content_length)
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
                self.client_gone = True
                raise
            self.sent = count
        self.finish()
        return True

    def send_continue(self) -> None:
        """Tell the client to send its body (on the first read of ``wsgi.input``)."""
        if not self.headers_sent:
            self._sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.continue_sent = True

    def expect_unmet(self) -> bool:
        """The client expects ``100 Continue`` and has not had it: its body may never come."""
        return self.expect_continue and not self.continue_sent

    def _send_head(self, length: int | None, data: bytes) -> None:
        """Choose the framing, then send the head with the first block of the body.

        ``length`` is the length of the whole body when ``data`` is all of it.
        """
        head = self._head(self._choose_framing(length))
        self.headers_sent = True
        framing = self.framing
        if framing == _CHUNKED:
            self._send_chunk(data, head)
            return
        if framing == _NONE:
            data = b""
        elif framing == _LENGTH and len(data) > self.content_length:  # type: ignore[operator]
            data = data[: self.content_length]
        self.sent = len(data)
        if len(data) <= _SMALL_BODY:
            self._sendall(head + data)
        else:
            self._sendall(head)
            self._sendall(data)

    def _send_chunk(self, data: bytes, head: bytes = b"") -> None:
        """Send ``data`` as one chunk (after ``head``, if given)."""
        self.sent += len(data)
        if len(data) <= _SMALL_BODY:
            self._sendall(b"%b%x\r\n%b\r\n" % (head, len(data), data))
        else:
            self._sendall(b"%b%x\r\n" % (head, len(data)))
            self._sendall(data)
            self._sendall(b"\r\n")

    def _choose_framing(self, length: int | None) -> str:
        """Set ``framing`` and ``keep_alive``; return the headers that announce them.

        ``length`` is the body's length when it is known in full.  The headers
        are those a GET would get, even when no body is sent (HEAD).
        """
        code = self.code
        no_body = code < 200 or code == 204 or code == 304
        keep_alive = self.keep_alive and not self.app_close
        extra = ""
        if no_body or self.content_length is not None:
            framing = _LENGTH
        elif length is not None:
            framing = _LENGTH
            self.content_length = length
            extra = f"Content-Length: {length}\r\n"
        elif self.chunk_ok:
            framing = _CHUNKED
            extra = "Transfer-Encoding: chunked\r\n"
        else:
            framing = _CLOSE
            keep_alive = False
        if no_body or self.head_only:
            framing = _NONE
        body = self.input
        if keep_alive and (
            self.expect_unmet() or (type(body) is _LengthInput and body.left > self.drain_limit)
        ):
            keep_alive = False  # the request body will not be read: close after the response
        if not keep_alive:
            extra += "Connection: close\r\n"
        elif not self.chunk_ok:
            extra += "Connection: keep-alive\r\n"  # an HTTP/1.0 client that asked for it
        self.framing = framing
        self.keep_alive = keep_alive
        return extra

    def _head(self, extra: str) -> bytes:
        """The status line and headers, encoded."""
        date = "" if self.has_date else _date_line()
        server = "" if self.has_server else f"Server: {self.server_version}\r\n"
        status_line = f"{self.protocol_version} {self.status}\r\n"
        return f"{status_line}{self.header_block}{extra}{date}{server}\r\n".encode("latin-1")

    def _sendall(self, data: bytes, flags: int = 0) -> None:
        try:
            if flags:
                self.connection.sendall(data, flags)
            else:
                send_all(self.connection, data)  # no poll() before the write (see there)
        except OSError:
            self.client_gone = True
            raise
