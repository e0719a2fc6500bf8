"""HTTP connections that hold a thread only while a request is being handled.

``BaseHTTPRequestHandler.handle()`` loops over ``handle_one_request()`` for
the whole life of a connection, so a thread per connection would let a few
idle keep-alive clients (or slow ones) starve everyone else.  For handlers
that keep the standard ``handle()``, the worker instead:

* gathers each request head in its selector, reading whatever bytes are there
  without blocking, and hands the connection to a thread only once the head is
  complete (Puma's reactor does the same; gunicorn asks for nginx in front).
  A head that does not complete within ``header_timeout`` gets ``408``; one
  larger than :data:`MAX_HEAD` gets ``431``;
* calls the documented ``handle_one_request()`` on a pool thread, then parks
  the connection in the selector again, for at most ``keepalive_timeout``.

The handler reads through an ``rfile`` that first returns the bytes the
selector gathered, then reads the socket; what it buffered but did not use (a
pipelined request) is handed back, so nothing is read twice or lost.  Writes
and body reads in the thread are bounded by the socket timeout (the handler's
``timeout``, or the engine's ``io_timeout``), each write as a whole: a client
that reads its reply a byte a second holds one thread for at most that long
per write (nginx's ``send_timeout`` is the same kind of bound).

On a socket with a timeout, CPython polls the socket before every ``send``.
An unbuffered handler's ``wfile`` is therefore replaced by one that writes
with :func:`send_all`: a plain ``write`` first (a response nearly always fits
in the socket buffer), ``sendall`` with its timeout only for what did not fit.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import io
import os
import socket
from typing import Any

#: The largest request head (request line and headers) gathered, in bytes.
MAX_HEAD = 65536


class Outcome(enum.Enum):
    """What to do with a connection after serving a request on it."""

    PARK = "park"
    CLOSED = "closed"


class Gathered(enum.Enum):
    """What reading the bytes available on a parked connection found."""

    WAITING = "waiting"  # no complete head yet
    HEAD = "head"  # a complete request head is buffered
    CLOSED = "closed"  # the client closed (or reset) the connection
    TOO_LARGE = "too large"  # the head exceeds MAX_HEAD


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


def send_all(sock: socket.socket, data: Any) -> None:
    """``sock.sendall(data)`` without the poll before the first write, where possible.

    On a socket with a timeout (a non-blocking fd) the first write goes straight
    to the fd; on a blocking one it blocks as ``sendall`` would.  Any other kind
    of socket (an ``ssl.SSLSocket`` must not be written to underneath) gets
    ``sendall`` itself.
    """
    if type(sock) is not socket.socket:
        sock.sendall(data)
        return
    if type(data) is bytes:  # the usual case: no view needed unless the write is short
        try:
            sent = os.write(sock.fileno(), data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < len(data):
            with memoryview(data) as rest:
                sock.sendall(rest[sent:])
        return
    with memoryview(data) as view, view.cast("B") as octets:
        try:
            sent = os.write(sock.fileno(), octets)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < len(octets):
            sock.sendall(octets[sent:])


class _DirectWriter(io.BufferedIOBase):
    """An unbuffered handler's ``wfile`` that writes with :func:`send_all`."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        send_all(self._sock, data)
        with memoryview(data) as view:
            return view.nbytes

    def fileno(self) -> int:
        return self._sock.fileno()


@functools.cache
def _plain_writers() -> tuple[type, ...]:
    """The unbuffered ``wfile`` classes of ``socketserver`` and prefork's handlers."""
    import socketserver

    from prefork.core import handlers

    found = [getattr(module, "_SocketWriter", None) for module in (socketserver, handlers)]
    return tuple(kind for kind in found if isinstance(kind, type))


def head_complete(data: bytes | bytearray) -> bool:
    """Whether ``data`` starts with a whole request head (or an HTTP/0.9 request line)."""
    if b"\r\n\r\n" in data or b"\n\n" in data:
        return True
    if not data:
        return False
    newline = data.find(b"\n", 0, MAX_HEAD)
    if newline < 0:
        return False
    line = bytes(data[:newline])
    return b" HTTP/" not in line and len(line.split()) == 2


class _GatheredThenSocket(io.RawIOBase):
    """A raw reader that returns the gathered bytes first, then reads the socket."""

    def __init__(self, conn: HTTPConnection) -> None:
        self._conn = conn
        self.socket_reads = True
        #: Bytes returned so far. As ``tell()``, it lets the ``BufferedReader`` over this
        #: reader say how much of them the handler has used (``rfile.tell()``).
        self.handed_out = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.handed_out

    def readinto(self, buffer: Any) -> int | None:
        pending = self._conn.pending
        if pending:
            count = min(len(buffer), len(pending))
            buffer[:count] = pending[:count]
            del pending[:count]
            self.handed_out += count
            return count
        if not self.socket_reads:
            return None  # handing buffered bytes back: never touch the socket
        count = self._conn.sock.recv_into(buffer)
        self.handed_out += count
        return count

    def fileno(self) -> int:
        return self._conn.sock.fileno()


class HTTPConnection:
    """One HTTP connection: gathered in the selector, served request by request."""

    def __init__(self, server: Any, sock: socket.socket, client_address: Any) -> None:
        self.server = server
        self.sock = sock
        self.client_address = client_address
        self.pending = bytearray()
        self.deadline = 0.0
        self.got_first_byte = False
        self.handler: Any = None
        self._raw: _GatheredThenSocket | None = None

    def fileno(self) -> int:
        """The connection's fd, so a selector can watch it while parked."""
        return self.sock.fileno()

    # -- the worker's loop ------------------------------------------------------------------

    def gather(self) -> Gathered:
        """Read what the socket has without blocking; say whether a head is complete.

        The socket must have a timeout (the worker gives every such connection
        one), which makes its fd non-blocking; ``socket.recv`` would wait out
        that timeout first, hence ``os.read``.
        """
        fd = self.sock.fileno()
        try:
            while len(self.pending) <= MAX_HEAD:
                data = os.read(fd, 65536)
                if not data:
                    return Gathered.CLOSED
                self.pending += data
                if len(data) < 65536:
                    break
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return Gathered.CLOSED
        if head_complete(self.pending):
            return Gathered.HEAD
        if len(self.pending) > MAX_HEAD:
            return Gathered.TOO_LARGE
        return Gathered.WAITING

    def end(self, state: Gathered) -> None:
        """Finish a connection whose gathering ended it: ``431`` for a head too large
        (:attr:`Gathered.TOO_LARGE`), a plain close for a client that left."""
        if state is Gathered.TOO_LARGE:
            self.reject("431 Request Header Fields Too Large")
        else:
            self.close()

    def reject(self, status: str) -> None:
        """Answer ``status`` (e.g. ``"408 Request Timeout"``) without blocking, and close."""
        body = f"{status}\n".encode()
        reply = (
            f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + body
        with contextlib.suppress(OSError):
            self.sock.send(reply, socket.MSG_DONTWAIT)
        self.close()

    # -- a pool thread ----------------------------------------------------------------------

    def serve(self, *, last: bool = False) -> Outcome:
        """Serve the requests whose heads are complete; run on a pool thread.

        Serves every complete request already buffered (pipelining) and returns
        :attr:`Outcome.PARK` when the connection waits for more bytes, or
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
                self._take_back_buffered_input()
                if not head_complete(self.pending):
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
        """Construct the handler as the server would, but without its ``handle()`` loop.

        The class's own ``__init__`` runs (``SimpleHTTPRequestHandler`` sets its
        ``directory`` there) and calls ``setup()``; ``handle`` and ``finish``
        are shadowed for that call only, since this connection serves one
        request at a time and finishes when it closes.
        """
        handler_class = self.server.RequestHandlerClass
        handler = handler_class.__new__(handler_class)
        handler.handle = handler.finish = _do_nothing
        try:
            handler.__init__(self.sock, self.client_address, self.server)
        finally:
            del handler.handle, handler.finish
        self.handler = handler
        # Read through the gathered bytes first (see the module docstring).
        self._raw = _GatheredThenSocket(self)
        with contextlib.suppress(Exception):
            handler.rfile.close()
        if type(handler.wfile) in _plain_writers():
            handler.wfile = _DirectWriter(self.sock)
        buffer_size = getattr(handler, "rbufsize", -1)
        if buffer_size == 0:
            handler.rfile = self._raw
        else:
            size = buffer_size if buffer_size > 0 else io.DEFAULT_BUFFER_SIZE
            handler.rfile = io.BufferedReader(self._raw, size)

    def _take_back_buffered_input(self) -> None:
        """Move what the handler's rfile buffered but did not use back to ``pending``."""
        rfile, raw = self.handler.rfile, self._raw
        if raw is None or rfile is raw:
            return
        try:
            if rfile.tell() == raw.handed_out:
                return  # the handler used every byte it was given: nothing is buffered
        except (AttributeError, OSError, ValueError):
            pass  # not the reader set up here: look into its buffer
        raw.socket_reads = False
        try:
            buffered = rfile.peek(1)
            leftover = rfile.read(len(buffered)) if buffered else b""
        finally:
            raw.socket_reads = True
        if leftover:
            self.pending[:0] = leftover

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


def _do_nothing() -> None:
    """Stands in for ``handle()`` and ``finish()`` while the handler is constructed."""
