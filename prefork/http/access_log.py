"""The access log of the WSGI handler: one line per request, in gunicorn's format language.

The format is a ``%``-format string over named *atoms*, gunicorn's set:
``h`` remote address, ``l`` ``-``, ``u`` the user of Basic authentication,
``t`` the time of the request (``[07/Dec/2026:23:21:15 +0000]``), ``r`` the
request line, ``m`` method, ``U`` path, ``q`` query string, ``H`` protocol,
``s`` status, ``B`` response body length, ``b`` the same or ``-`` for none,
``f`` referer, ``a`` user agent, ``T``/``M``/``D`` the request's duration in
whole seconds, milliseconds and microseconds, ``L`` in decimal seconds, ``p``
the worker's pid (``<1234>``), ``{header}i`` a request header, ``{header}o`` a
response header and ``{name}e`` an environment variable.  An atom with no
value logs ``-``.  :data:`DEFAULT_FORMAT` is the combined log format.

Lines go to the ``prefork.access`` logger at level ``INFO``; the access log
is on when that logger has a handler of its own (``--access-logfile`` adds
one), and costs nothing per request otherwise.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import time
from typing import Any

__all__ = ["DEFAULT_FORMAT", "LOGGER_NAME", "AccessLog", "access_log_for"]

#: gunicorn's default: Apache's combined log format.
DEFAULT_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'

LOGGER_NAME = "prefork.access"

_LOGGER = logging.getLogger(LOGGER_NAME)

_HEADER_ATOMS = {
    "f": "HTTP_REFERER",
    "a": "HTTP_USER_AGENT",
}


class AccessLog:
    """Writes one line per request to ``logger`` in ``format``."""

    def __init__(self, format: str = DEFAULT_FORMAT, logger: logging.Logger | None = None) -> None:
        self.format = format
        self.logger = logger or logging.getLogger(LOGGER_NAME)
        try:
            format % _Atoms({}, {})
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"access log format {format!r}: {exc}") from None

    def log(
        self,
        environ: dict[str, Any],
        status: int | None,
        sent: int,
        response_headers: list[tuple[str, str]] | None,
        started: float,
    ) -> None:
        """Log a request that began at ``started`` (``time.time()``) and was answered now."""
        elapsed = time.time() - started
        query = environ.get("QUERY_STRING", "")
        path = environ.get("PATH_INFO", "")
        request_line = f"{environ.get('REQUEST_METHOD', '-')} {environ.get('RAW_URI', path)}"
        protocol = environ.get("SERVER_PROTOCOL", "-")
        atoms = {
            "h": environ.get("REMOTE_ADDR") or "-",
            "l": "-",
            "u": _basic_user(environ.get("HTTP_AUTHORIZATION")),
            "t": _request_time(started),
            "r": f"{request_line} {protocol}",
            "m": environ.get("REQUEST_METHOD", "-"),
            "U": path,
            "q": query,
            "H": protocol,
            "s": str(status) if status is not None else "-",
            "B": str(sent),
            "b": str(sent) if sent else "-",
            "T": str(int(elapsed)),
            "M": str(int(elapsed * 1000)),
            "D": str(int(elapsed * 1_000_000)),
            "L": f"{elapsed:.6f}",
            "p": f"<{os.getpid()}>",
        }
        for atom, key in _HEADER_ATOMS.items():
            atoms[atom] = environ.get(key) or "-"
        try:
            line = self.format % _Atoms(atoms, environ, response_headers or ())
        except Exception:  # a format that fails on some request must not fail the request
            self.logger.exception("access log: the format %r failed", self.format)
            return
        logger = self.logger
        if logger.isEnabledFor(logging.INFO):
            # makeRecord and handle, as Logger.info does, without looking up the caller's
            # frame (a fifth of the cost of a line): it is always this one.
            logger.handle(
                logger.makeRecord(logger.name, logging.INFO, __file__, 0, line, (), None)
            )


class _Atoms(dict[str, str]):
    """The atoms of one request; ``{name}i``, ``{name}o`` and ``{name}e`` looked up on use."""

    def __init__(
        self,
        atoms: dict[str, str],
        environ: dict[str, Any],
        response_headers: Any = (),
    ) -> None:
        super().__init__(atoms)
        self.environ = environ
        self.response_headers = response_headers

    def __missing__(self, key: str) -> str:
        if key.startswith("{") and len(key) > 3 and key[-2] == "}":
            name, kind = key[1:-2], key[-1]
            if kind == "i":
                value = self.environ.get("HTTP_" + name.upper().replace("-", "_"))
                return value or "-"
            if kind == "o":
                lowered = name.lower()
                for header, value in self.response_headers:
                    if header.lower() == lowered:
                        return value
                return "-"
            if kind == "e":
                return os.environ.get(name, "-")
        return "-"


_last_time: tuple[int, str] = (-1, "")


def _request_time(started: float) -> str:
    """``[07/Dec/2026:23:21:15 +0000]``, formatted once per second."""
    global _last_time
    second = int(started)
    cached_second, text = _last_time
    if second != cached_second:
        text = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(second))
        _last_time = (second, text)
    return text


def _basic_user(authorization: str | None) -> str:
    """The user name of ``Authorization: Basic ...``, else ``-``."""
    if not authorization:
        return "-"
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "basic":
        return "-"
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("latin-1")
    except (binascii.Error, ValueError):
        return "-"
    return decoded.partition(":")[0] or "-"


def access_log_for(server: Any) -> AccessLog | None:
    """The server's access log, or ``None`` while the ``prefork.access`` logger has no handler.

    Built once per server and format (``access_log_format``, default
    :data:`DEFAULT_FORMAT`), in the worker that serves it.
    """
    logger = _LOGGER
    if not logger.handlers:
        return None
    format = getattr(server, "access_log_format", None) or DEFAULT_FORMAT
    cached = getattr(server, "_prefork_access_log", None)
    if cached is None or cached.format != format:
        cached = AccessLog(format, logger)
        with contextlib.suppress(AttributeError):
            server._prefork_access_log = cached
    return cached
