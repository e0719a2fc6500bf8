"""The PROXY protocol (HAProxy's, versions 1 and 2): the client's address, sent by a proxy.

A load balancer that speaks it (HAProxy, AWS NLB, nginx ``proxy_protocol``)
writes one header at the start of each connection, before any byte of the
client's: ``PROXY TCP4 203.0.113.9 192.0.2.1 51234 443\\r\\n`` in version 1, a
binary block after a 12-byte signature in version 2.  With ``proxy_protocol``
on, a connection from a peer in ``proxy_allow_ips`` must start with one (as the
protocol's specification asks: a receiver never guesses); the worker reads it
in its selector, without a thread, and the handler then sees the client's
address as ``client_address``.  Connections from other peers are served as
they come.

:class:`ProxyHeaderReader` reads exactly the header's bytes and never one
more, so whatever follows (a request, a TLS handshake) stays in the socket for
the handler.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import selectors
import socket
from collections.abc import Callable
from typing import Any

__all__ = [
    "V2_SIGNATURE",
    "AwaitingHeader",
    "AwaitingHeaders",
    "ProxyHeaderError",
    "ProxyHeaderReader",
    "Read",
]

logger = logging.getLogger("prefork.worker")  # public: docs/operations.md, Logging

#: The first 12 bytes of a version 2 header.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

_V1_PREFIX = b"PROXY "
#: The longest version 1 line, CRLF included (the specification's limit).
_V1_MAX = 107
#: The longest version 2 address block read (a Unix socket pair, with TLVs after it).
_V2_MAX_BODY = 1024

_V2_LOCAL, _V2_PROXY = 0x0, 0x1
_V2_INET, _V2_INET6, _V2_UNIX = 0x1, 0x2, 0x3
_V2_STREAM = 0x1


class ProxyHeaderError(ValueError):
    """The connection did not start with a valid PROXY header."""


class Read(enum.Enum):
    """Where reading a header stands after the bytes available were read."""

    WAITING = "waiting"  # more bytes are needed
    DONE = "done"  # the header is read: see ProxyHeaderReader.source
    CLOSED = "closed"  # the peer closed the connection first


class ProxyHeaderReader:
    """Reads one PROXY header, version 1 or 2, from a connection, without blocking.

    Call :meth:`read` whenever the socket is readable, until it returns
    :attr:`Read.DONE` (or raises :class:`ProxyHeaderError`).  ``source`` is
    then the client's address as the proxy saw it, ``(host, port)``, or
    ``None`` when the header gives none (``UNKNOWN``, ``LOCAL``, or a Unix
    socket pair): the connection's own peer stands.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = bytearray()
        self.source: tuple[str, int] | None = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> Read:
        """Read what is there (never past the header); say whether the header is complete."""
        while True:
            want = self._still_needed()
            try:
                if self.data[:1] == b"P":
                    # A line: take what has arrived up to its end, which a peek finds.
                    peeked = self.sock.recv(want, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                    end = peeked.find(b"\n")
                    want = end + 1 if end >= 0 else len(peeked)
                    if not want:
                        return Read.CLOSED
                chunk = self.sock.recv(want, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return Read.WAITING
            except OSError:
                return Read.CLOSED
            if not chunk:
                return Read.CLOSED
            self.data += chunk
            if self._complete():
                return Read.DONE

    def _still_needed(self) -> int:
        """How many bytes to read next: exactly what the header still has, or a line's most."""
        data = self.data
        if not data:
            return 1  # its first byte tells version 1 from version 2
        if data[:1] == b"P":
            return _V1_MAX - len(data)
        if len(data) < 16:
            return 16 - len(data)
        return 16 + int.from_bytes(data[14:16], "big") - len(data)

    def _complete(self) -> bool:
        """Check what has been read so far; whether it is the whole header."""
        data = bytes(self.data)
        if data[:1] == b"P":
            if not _V1_PREFIX.startswith(data[: len(_V1_PREFIX)]):
                raise ProxyHeaderError("the connection does not start with a PROXY header")
            if data.endswith(b"\n"):
                self.source = _parse_v1(data)
                return True
            if len(data) >= _V1_MAX:
                raise ProxyHeaderError("PROXY line longer than 107 bytes")
            return False
        if not V2_SIGNATURE.startswith(data[:12]):
            raise ProxyHeaderError("the connection does not start with a PROXY header")
        if len(data) < 16:
            return False
        length = int.from_bytes(data[14:16], "big")
        if length > _V2_MAX_BODY:
            raise ProxyHeaderError(f"PROXY v2 address block of {length} bytes")
        if len(data) < 16 + length:
            return False
        self.source = _parse_v2(data)
        return True


def _parse_v1(line: bytes) -> tuple[str, int] | None:
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY line is not ASCII") from None
    if not text.endswith("\r\n"):
        raise ProxyHeaderError("PROXY line does not end with CRLF")
    fields = text[:-2].split(" ")
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return None
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"malformed PROXY line {text[:-2]!r}")
    _, family, source, destination, source_port, destination_port = fields
    version = 4 if family == "TCP4" else 6
    address = _address(source, version)
    _address(destination, version)  # checked, not kept
    _port(destination_port)
    return address, _port(source_port)


def _parse_v2(data: bytes) -> tuple[str, int] | None:
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        raise ProxyHeaderError(f"PROXY v2 header of version {version}")
    if command == _V2_LOCAL:
        return None  # the proxy's own connection (a health check): its address stands
    if command != _V2_PROXY:
        raise ProxyHeaderError(f"PROXY v2 command {command}")
    family, transport = data[13] >> 4, data[13] & 0x0F
    body = data[16:]
    if transport != _V2_STREAM or family == _V2_UNIX or family not in (_V2_INET, _V2_INET6):
        return None  # not a TCP client: nothing to take from it
    size = 4 if family == _V2_INET else 16
    if len(body) < 2 * size + 4:
        raise ProxyHeaderError("PROXY v2 address block too short")
    source = ipaddress.ip_address(body[:size])
    port = int.from_bytes(body[2 * size : 2 * size + 2], "big")
    return str(source), port


def _address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"PROXY address {text!r}") from None
    if address.version != version:
        raise ProxyHeaderError(f"PROXY address {text!r} is not IPv{version}")
    return str(address)


def _port(text: str) -> int:
    if not text.isdigit() or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ProxyHeaderError(f"PROXY port {text!r}")
    return int(text)


class AwaitingHeader:
    """A connection in the selector until its PROXY header has arrived (or its deadline)."""

    __slots__ = ("deadline", "peer", "reader", "server")

    def __init__(self, reader: ProxyHeaderReader, server: Any, peer: Any, deadline: float) -> None:
        self.reader = reader
        self.server = server
        self.peer = peer
        self.deadline = deadline


class AwaitingHeaders:
    """The connections of a worker whose PROXY header is still arriving, held by no thread.

    :meth:`start` registers a new connection in ``selector`` (with its
    :class:`AwaitingHeader` as ``data``); the loop calls :meth:`readable` for
    those keys and :meth:`expire` every turn.  A header that completes passes
    the connection on to ``serve(sock, client_address, server)``; one that is
    invalid, cut short or late closes it.
    """

    def __init__(
        self,
        selector: selectors.BaseSelector,
        serve: Callable[[socket.socket, Any, Any], None],
        name: str,
    ) -> None:
        self.selector = selector
        self.serve = serve
        self.name = name  # for the log: "worker 3"
        self._by_fd: dict[int, AwaitingHeader] = {}

    def __len__(self) -> int:
        return len(self._by_fd)

    def start(self, sock: socket.socket, peer: Any, server: Any, deadline: float) -> None:
        """Wait for ``sock``'s header until ``deadline`` (reading what is there already)."""
        waiting = AwaitingHeader(ProxyHeaderReader(sock), server, peer, deadline)
        self._by_fd[sock.fileno()] = waiting
        self.selector.register(sock, selectors.EVENT_READ, waiting)
        self.readable(waiting)

    def readable(self, waiting: AwaitingHeader) -> None:
        """Read what arrived of a header; once it is whole, serve the connection."""
        sock = waiting.reader.sock
        try:
            state = waiting.reader.read()
        except ProxyHeaderError as exc:
            logger.warning("%s: %s: %s; closing", self.name, waiting.peer, exc)
            self._forget(waiting)
            waiting.server.shutdown_request(sock)
            return
        if state is Read.WAITING:
            return
        self._forget(waiting)
        if state is Read.CLOSED:
            waiting.server.shutdown_request(sock)
            return
        self.serve(sock, waiting.reader.source or waiting.peer, waiting.server)

    def next_deadline(self) -> float | None:
        """The earliest deadline, if any connection waits."""
        return min((w.deadline for w in self._by_fd.values()), default=None)

    def shorten_deadlines(self, limit: float) -> None:
        """Give every waiting connection at most until ``limit`` (a graceful stop)."""
        for waiting in self._by_fd.values():
            waiting.deadline = min(waiting.deadline, limit)

    def expire(self, now: float) -> None:
        """Close the connections whose header did not arrive in time."""
        if not self._by_fd:
            return
        for waiting in [w for w in self._by_fd.values() if now >= w.deadline]:
            logger.debug("%s: %s: no PROXY header in time", self.name, waiting.peer)
            self._forget(waiting)
            waiting.server.shutdown_request(waiting.reader.sock)

    def _forget(self, waiting: AwaitingHeader) -> None:
        del self._by_fd[waiting.reader.fileno()]
        self.selector.unregister(waiting.reader.sock)
