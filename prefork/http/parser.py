"""The request head: the request line and header fields, read and parsed into the environ.

:func:`read_head` takes the head off the connection's read buffer, bounded by the
request limits; :func:`parse_request_line`, :func:`request_environ` and
:func:`add_header_fields` turn it into the environ of PEP 3333, and
:func:`request_body` chooses the reader of the body its fields announce.  A head
that cannot be served raises :class:`_RequestError` with the status to answer.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from prefork.http.body import _EMPTY_INPUT, _ChunkedInput, _Input, _LengthInput

__all__ = [
    "add_header_fields",
    "parse_request_line",
    "read_head",
    "request_body",
    "request_environ",
    "request_limits",
]

_UNLIMITED = sys.maxsize // 2
"""A limit of 0 (none) in the ``limit_request_*`` settings: no line is this long."""

_MAX_FIELDS = 32768
"""``limit_request_fields`` of 0 (as gunicorn: its greatest value)."""

_MAX_CACHED = 1024
"""Bound of the caches of header names (clients choose the names)."""


class _RequestError(Exception):
    """A request that cannot be served: answered with ``status`` and closed."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
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


def _parse_length(value: str) -> int:
    """A Content-Length value as an int; ``ValueError`` if it is not one."""
    value = value.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise ValueError(f"invalid Content-Length {value!r}")
    return int(value)


def request_limits(
    server: Any, max_line: int, max_headers: int, max_field_size: int
) -> tuple[int, int, int]:
    """``(max_line, max_headers, max_field_size)`` after the server's ``limit_request_*``.

    Each attribute of the server (the command's settings) that is set replaces
    the handler's default passed in; 0 is no limit.
    """
    line = getattr(server, "limit_request_line", None)
    if line is not None:
        max_line = line or _UNLIMITED
    fields = getattr(server, "limit_request_fields", None)
    if fields is not None:
        max_headers = fields or _MAX_FIELDS
    size = getattr(server, "limit_request_field_size", None)
    if size is not None:
        max_field_size = size or _UNLIMITED
    return max_line, max_headers, max_field_size


def read_head(rfile: Any, max_line: int, max_field: int, max_headers: int) -> list[bytes] | None:
    """The request line and header lines, without line endings; ``None`` at EOF.

    Fast path: the whole head is already in the read buffer (the usual
    case), and is taken and split in one go.  Otherwise it is read line by
    line, each line bounded.
    """
    peek = getattr(rfile, "peek", None)  # absent if rbufsize is 0
    buffered = peek(1) if peek is not None else b""
    # A head shorter than both limits has no line over either of them.
    end = buffered.find(b"\r\n\r\n", 0, min(max_line, max_field))
    if end > 0 and not buffered.startswith(b"\r\n"):
        head = buffered[:end]
        if head.count(b"\n") == head.count(b"\r\n"):  # no bare LF line endings
            rfile.read(end + 4)
            lines = head.split(b"\r\n")
            if len(lines) > max_headers + 1:
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


def parse_request_line(request_line: bytes, max_line: int) -> tuple[str, bytes, str, bool]:
    """``(method, target, SERVER_PROTOCOL, HTTP/1.1 or later)`` of a request line."""
    if len(request_line) > max_line:
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
    return method, target, protocol, http11


def request_environ(
    base: dict[str, Any], method: str, target: bytes, protocol: str
) -> dict[str, Any]:
    """A copy of ``base`` with the entries of the request line (the target checked)."""
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

    environ = base.copy()
    environ["REQUEST_METHOD"] = method
    environ["PATH_INFO"] = _unquote_path(path)
    environ["QUERY_STRING"] = query.decode("latin-1")
    environ["RAW_URI"] = environ["REQUEST_URI"] = raw_uri.decode("latin-1")
    environ["SERVER_PROTOCOL"] = protocol
    environ["wsgi.errors"] = sys.stderr
    return environ


def add_header_fields(environ: dict[str, Any], lines: list[bytes]) -> None:
    """Add the header fields ``lines[1:]`` to ``environ`` (repeated ones joined with ``,``)."""
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


def request_body(
    environ: dict[str, Any],
    http11: bool,
    rfile: Any,
    on_first_read: Callable[[], None] | None,
    max_line: int,
    max_trailers: int,
) -> _Input:
    """The ``wsgi.input`` reader of the body the head announces (400 or 501 if it cannot be).

    ``max_line`` and ``max_trailers`` bound a chunked body's size and trailer lines.
    """
    length = environ.get("CONTENT_LENGTH")
    coding = environ.get("HTTP_TRANSFER_ENCODING")
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
        return _ChunkedInput(rfile, on_first_read, max_line, max_trailers)
    if length is not None:
        try:
            size = _parse_length(length)
        except ValueError:
            raise _RequestError(400, "invalid Content-Length") from None
        return _LengthInput(rfile, size, on_first_read) if size else _EMPTY_INPUT
    return _EMPTY_INPUT
