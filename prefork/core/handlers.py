"""Request handler classes: one instance handles one request.

The server instantiates ``RequestHandlerClass(request, client_address,
server)``; the constructor runs :meth:`~BaseRequestHandler.setup`,
:meth:`~BaseRequestHandler.handle` and, even if ``handle`` raised,
:meth:`~BaseRequestHandler.finish`.
"""

from __future__ import annotations

import contextlib
import io
import socket
from typing import Any

__all__ = ["BaseRequestHandler", "DatagramRequestHandler", "StreamRequestHandler"]


class BaseRequestHandler:
    """Base class for request handlers.

    Override :meth:`handle`; extend :meth:`setup` and :meth:`finish` if needed.
    Attributes: ``request`` (a connected socket for stream servers,
    ``(data, socket)`` for datagram servers), ``client_address`` and ``server``.
    """

    def __init__(self, request: Any, client_address: Any, server: Any) -> None:
        """Handle the request: ``setup()``, ``handle()``, then always ``finish()``."""
        #: The request: a connected socket for stream servers, ``(data, socket)``
        #: for datagram servers.
        self.request = request
        #: The client's address, as the server's :meth:`~BaseServer.get_request` returned it.
        self.client_address = client_address
        #: The server instance handling the request (for its settings and state).
        self.server = server
        self.setup()
        try:
            self.handle()
        finally:
            self.finish()

    def setup(self) -> None:
        """Called before :meth:`handle` to prepare the request; does nothing by default."""

    def handle(self) -> None:
        """Service the request: override it.  Does nothing by default.

        The request is :attr:`request`, the peer :attr:`client_address` and the
        server :attr:`server`.
        """

    def finish(self) -> None:
        """Called after :meth:`handle` (even if it raised) to clean up; does nothing
        by default."""


class _SocketWriter(io.BufferedIOBase):
    """An unbuffered, write-only file on a socket: every write is one ``sendall``.

    ``socket.makefile('wb', 0)`` returns a raw ``SocketIO`` whose ``write`` may
    send only part of the data; ``sendall`` sends it all, resuming after
    signals.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._sock.sendall(b)
        with memoryview(b) as view:
            return view.nbytes

    def fileno(self) -> int:
        return self._sock.fileno()


class StreamRequestHandler(BaseRequestHandler):
    """A handler for stream sockets with file objects ``rfile`` and ``wfile``.

    Class attributes: ``rbufsize`` (read buffer size, -1 for the default),
    ``wbufsize`` (0, the default, makes every ``wfile.write`` go straight to
    the socket), ``timeout`` (applied to the connection, so a silent client
    raises ``TimeoutError`` in the handler instead of holding it forever) and
    ``disable_nagle_algorithm`` (sets ``TCP_NODELAY``).
    """

    #: Buffer size of :attr:`rfile`; -1 for the default buffer size.
    rbufsize: int = -1
    #: Buffer size of :attr:`wfile`; 0 (the default) sends every write at once, whole.
    wbufsize: int = 0
    #: Socket timeout of the connection in seconds, or ``None`` for none.
    timeout: float | None = None
    #: Set ``TCP_NODELAY`` so small writes are not held back by Nagle's algorithm.
    disable_nagle_algorithm: bool = False
    #: A binary file reading from the connection (set by :meth:`setup`).
    rfile: Any
    #: A binary file writing to the connection (set by :meth:`setup`).
    wfile: Any

    def setup(self) -> None:
        """Apply the socket options and create ``rfile`` and ``wfile``."""
        self.connection = self.request
        if self.timeout is not None:
            self.connection.settimeout(self.timeout)
        if self.disable_nagle_algorithm:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.rfile = self.connection.makefile("rb", self.rbufsize)
        if self.wbufsize == 0:
            self.wfile = _SocketWriter(self.connection)
        else:
            self.wfile = self.connection.makefile("wb", self.wbufsize)

    def finish(self) -> None:
        """Flush ``wfile`` (ignoring a vanished peer) and close both files."""
        if not self.wfile.closed:
            with contextlib.suppress(OSError):  # the peer is gone: nobody left to tell
                self.wfile.flush()
        self.wfile.close()
        self.rfile.close()


class DatagramRequestHandler(BaseRequestHandler):
    """A handler for datagram sockets with file objects ``rfile`` and ``wfile``.

    ``rfile`` holds the received packet; what the handler writes to ``wfile``
    is sent back to ``client_address`` as one datagram by :meth:`finish`.
    """

    #: The received datagram, as a binary file (set by :meth:`setup`).
    rfile: io.BytesIO
    #: A binary file whose content :meth:`finish` sends back as the reply.
    wfile: io.BytesIO

    def setup(self) -> None:
        """Wrap the packet in ``rfile`` and give the handler an empty ``wfile``."""
        self.packet, self.socket = self.request
        self.rfile = io.BytesIO(self.packet)
        self.wfile = io.BytesIO()

    def finish(self) -> None:
        """Send what was written to ``wfile`` back to the client."""
        self.socket.sendto(self.wfile.getvalue(), self.client_address)
