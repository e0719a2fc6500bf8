"""Server classes: the documented ``socketserver`` API.

:class:`BaseServer` holds the request loop and the hooks; :class:`TCPServer`,
:class:`UDPServer` and the Unix variants add a socket.  The hook contract is the
standard library's, so a server written for ``socketserver`` (``http.server``,
``xmlrpc.server``, ``wsgiref``) runs on these classes unchanged.

Two things differ, both on purpose:

* ``serve_forever()`` waits on a wakeup pipe as well as the socket, so
  ``shutdown()`` returns at once instead of after up to ``poll_interval``.
* ``TCPServer.request_queue_size`` defaults to ``socket.SOMAXCONN`` instead of
  5: with a backlog of 5 a burst of clients meets dropped SYNs and waits a
  second or more to retry.  Set it on a subclass to choose another value.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import sys
import threading
import time
import traceback
from typing import Any

from prefork.core.wakeup import Waker

if hasattr(selectors, "PollSelector"):
    _ServerSelector: type[selectors.BaseSelector] = selectors.PollSelector
else:  # pragma: no cover - platforms without poll()
    _ServerSelector = selectors.SelectSelector

Address = Any
"""A socket address: ``(host, port)``, ``(host, port, flow, scope)`` or a path."""


class BaseServer:
    """Base class for server classes.

    Methods for the caller: ``__init__(server_address, RequestHandlerClass)``,
    :meth:`serve_forever`, :meth:`shutdown`, :meth:`handle_request`,
    :meth:`fileno` (for a selector), :meth:`server_close`, and use as a context
    manager.

    Methods that may be overridden: :meth:`~TCPServer.server_bind`,
    :meth:`server_activate`, :meth:`get_request`, :meth:`handle_timeout`,
    :meth:`verify_request`, :meth:`server_close`, :meth:`process_request`,
    :meth:`shutdown_request`, :meth:`close_request`, :meth:`service_actions`,
    :meth:`handle_error`.

    Methods for derived classes: :meth:`finish_request`.

    Class attributes that subclasses or instances may override: ``timeout``,
    ``address_family``, ``socket_type``, ``allow_reuse_address``,
    ``allow_reuse_port``.  Instance attributes: ``RequestHandlerClass``,
    ``server_address``, ``socket``.
    """

    #: Seconds :meth:`handle_request` waits for a request before calling
    #: :meth:`handle_timeout`; ``None`` waits for ever.  :meth:`serve_forever` ignores it.
    timeout: float | None = None
    #: The socket the server listens on; subclasses create it (:class:`TCPServer` does).
    socket: Any

    def __init__(self, server_address: Address, RequestHandlerClass: Any) -> None:  # noqa: N803
        """Store the address and handler class.  May be extended, do not override."""
        #: The address the server listens on; after binding, the one the socket reports
        #: (with the real port when it was 0).
        self.server_address = server_address
        #: The class instantiated once per request by :meth:`finish_request`.
        self.RequestHandlerClass = RequestHandlerClass
        self.__is_shut_down = threading.Event()
        self.__shutdown_request = False
        self.__waker: Waker | None = None
        self.__waker_lock = threading.Lock()

    def server_activate(self) -> None:
        """Called by the constructor, after :meth:`~TCPServer.server_bind`, to activate the server
        (a stream server starts listening).  May be overridden."""

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Handle requests until :meth:`shutdown` is called.

        ``service_actions()`` runs after each request and at least every
        ``poll_interval`` seconds.  ``self.timeout`` is ignored here.
        """
        self.__is_shut_down.clear()
        try:
            with Waker() as waker, _ServerSelector() as selector:
                with self.__waker_lock:
                    self.__waker = waker
                selector.register(self, selectors.EVENT_READ)
                selector.register(waker, selectors.EVENT_READ)
                try:
                    while not self.__shutdown_request:
                        ready = selector.select(poll_interval)
                        if self.__shutdown_request:
                            break
                        for key, _ in ready:
                            if key.fileobj is self:
                                self._handle_request_noblock()
                            else:
                                waker.drain()
                        self.service_actions()
                finally:
                    with self.__waker_lock:
                        self.__waker = None
        finally:
            self.__shutdown_request = False
            self.__is_shut_down.set()

    def shutdown(self) -> None:
        """Stop the :meth:`serve_forever` loop and wait until it has returned.

        Call it from another thread than the one running ``serve_forever()``,
        or it deadlocks.  Called before ``serve_forever()`` starts, it makes
        that call return as soon as it begins.
        """
        self.__shutdown_request = True
        self._wake()
        self.__is_shut_down.wait()

    def _wake(self) -> None:
        """Interrupt the ``serve_forever()`` wait, if one is in progress."""
        with self.__waker_lock:
            if self.__waker is not None:
                self.__waker.wake()

    def fileno(self) -> int:
        """The file descriptor to wait on for requests; subclasses provide it."""
        raise NotImplementedError

    def get_request(self) -> tuple[Any, Address]:
        """Take one request: ``(request, client_address)``; subclasses provide it."""
        raise NotImplementedError

    def service_actions(self) -> None:
        """Called by the :meth:`serve_forever` loop after each request and at least
        every ``poll_interval`` seconds.  May be overridden or extended (call
        ``super()``: the forking mixin reaps its children here)."""

    def handle_request(self) -> None:
        """Handle one request, waiting at most ``timeout`` seconds for it.

        The wait is the smaller of ``self.timeout`` and the socket's own
        timeout; when it expires :meth:`handle_timeout` is called instead.
        """
        timeout = self.socket.gettimeout()
        if timeout is None:
            timeout = self.timeout
        elif self.timeout is not None:
            timeout = min(timeout, self.timeout)
        deadline = None if timeout is None else time.monotonic() + timeout

        with _ServerSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            while True:
                if selector.select(timeout):
                    return self._handle_request_noblock()
                if deadline is not None:
                    timeout = deadline - time.monotonic()
                    if timeout < 0:
                        return self.handle_timeout()

    def _handle_request_noblock(self) -> None:
        """Take one ready request and process it; the socket must be readable."""
        try:
            request, client_address = self.get_request()
        except OSError:
            return
        if self.verify_request(request, client_address):
            try:
                self.process_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
                self.shutdown_request(request)
            except BaseException:
                self.shutdown_request(request)
                raise
        else:
            self.shutdown_request(request)

    def handle_timeout(self) -> None:
        """Called when :meth:`handle_request` times out.  May be overridden."""

    def verify_request(self, request: Any, client_address: Address) -> bool:
        """Return ``True`` to process the request, ``False`` to drop it unanswered
        (an access control hook).  May be overridden; the default accepts all."""
        return True

    def process_request(self, request: Any, client_address: Address) -> None:
        """Finish the request, then shut it down.

        The default does it inline, one request at a time; the mixins override
        it to hand the request to a thread, a child process or a worker's pool.
        """
        self.finish_request(request, client_address)
        self.shutdown_request(request)

    def server_close(self) -> None:
        """Clean up the server.  May be overridden."""

    def finish_request(self, request: Any, client_address: Address) -> None:
        """Handle the request by instantiating :attr:`RequestHandlerClass`.

        Called by :meth:`process_request` (in the thread, child or worker that
        serves the request); extend it rather than override it.
        """
        self.RequestHandlerClass(request, client_address, self)

    def shutdown_request(self, request: Any) -> None:
        """Called once per request to shut it down; closes it by default."""
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        """Called by :meth:`shutdown_request` to release an individual request.
        May be overridden."""

    def handle_error(self, request: Any, client_address: Address) -> None:
        """Handle an exception raised by a handler.  May be overridden.

        The default prints the traceback to standard error and the server
        continues with further requests.
        """
        print("-" * 40, file=sys.stderr)
        print(
            "Exception occurred during processing of request from",
            client_address,
            file=sys.stderr,
        )
        traceback.print_exc()
        print("-" * 40, file=sys.stderr)

    def __enter__(self) -> Any:
        """Use the server as a context manager; returns the server itself."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Leave the ``with`` block by calling :meth:`server_close`."""
        self.server_close()


class TCPServer(BaseServer):
    """A server on a stream socket (``AF_INET`` by default; set ``address_family``
    to ``socket.AF_INET6`` for IPv6).

    ``TCPServer(server_address, RequestHandlerClass, bind_and_activate=True)``
    binds and listens in the constructor unless ``bind_and_activate`` is false,
    in which case the caller may adjust ``socket`` and then call
    :meth:`server_bind` and :meth:`server_activate`.  If binding fails the
    socket is closed before the error propagates.
    """

    #: The socket family: ``socket.AF_INET``, ``AF_INET6`` or (Unix servers) ``AF_UNIX``.
    address_family: int = socket.AF_INET
    #: The socket type: ``socket.SOCK_STREAM``, or ``SOCK_DGRAM`` for datagram servers.
    socket_type: int = socket.SOCK_STREAM
    #: The listen backlog: connections the kernel queues until the server accepts them.
    #: ``socket.SOMAXCONN`` here, where the standard library uses 5.
    request_queue_size: int = socket.SOMAXCONN
    #: Set ``SO_REUSEADDR`` before binding, so a restarted server can bind the address
    #: while connections of its previous run linger in ``TIME_WAIT``.
    allow_reuse_address: bool = False
    #: Set ``SO_REUSEPORT`` before binding, where the platform has it.
    allow_reuse_port: bool = False

    def __init__(
        self,
        server_address: Address,
        RequestHandlerClass: Any,  # noqa: N803
        bind_and_activate: bool = True,
    ) -> None:
        """Create the socket and, by default, bind and activate it."""
        BaseServer.__init__(self, server_address, RequestHandlerClass)
        self.socket = socket.socket(self.address_family, self.socket_type)
        if bind_and_activate:
            try:
                self.server_bind()
                self.server_activate()
            except BaseException:
                self.server_close()
                raise

    def server_bind(self) -> None:
        """Set the reuse options, bind, and record the bound ``server_address``."""
        if self.allow_reuse_address and hasattr(socket, "SO_REUSEADDR"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.allow_reuse_port and hasattr(socket, "SO_REUSEPORT"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """Listen, with a backlog of ``request_queue_size``."""
        self.socket.listen(self.request_queue_size)

    def server_close(self) -> None:
        """Close the listening socket."""
        self.socket.close()

    def fileno(self) -> int:
        """The socket's file descriptor (-1 once closed), for a selector."""
        return self.socket.fileno()

    def get_request(self) -> tuple[Any, Address]:
        """Accept a connection: returns ``(connection, client_address)``."""
        return self.socket.accept()

    def shutdown_request(self, request: Any) -> None:
        """Half-close the connection so the peer sees EOF, then close it."""
        # SHUT_WR sends FIN after any unsent data, where a bare close() of a
        # socket with unread input would send RST and lose the reply.
        with contextlib.suppress(OSError):
            request.shutdown(socket.SHUT_WR)
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        """Close the connection."""
        request.close()


#: Receive without waiting, on a blocking socket (0 where the platform lacks it).
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


class UDPServer(TCPServer):
    """A server on a datagram socket; each request is ``(data, socket)``.

    ``max_packet_size`` bounds the datagram read by :meth:`get_request`.
    """

    allow_reuse_address = False
    allow_reuse_port = False
    socket_type = socket.SOCK_DGRAM
    #: The largest datagram read by :meth:`get_request`; longer ones are truncated.
    max_packet_size: int = 8192

    def get_request(self) -> tuple[Any, Address]:
        """Receive one datagram: returns ``((data, socket), client_address)``.

        It never waits (``MSG_DONTWAIT``; ``BlockingIOError`` when nothing is
        there): it is called once the socket is readable, and in a prefork
        worker another worker may have taken the datagram first, while the
        socket itself stays blocking so that replies wait for room.
        """
        data, client_addr = self.socket.recvfrom(self.max_packet_size, _DONTWAIT)
        return (data, self.socket), client_addr

    def server_activate(self) -> None:
        """Datagram sockets do not listen."""

    def shutdown_request(self, request: Any) -> None:
        """Nothing to shut down for a datagram."""
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        """Nothing to close: the socket is shared."""


if hasattr(socket, "AF_UNIX"):

    class UnixStreamServer(TCPServer):
        """A stream server on a Unix domain socket path."""

        address_family = socket.AF_UNIX

    class UnixDatagramServer(UDPServer):
        """A datagram server on a Unix domain socket path."""

        address_family = socket.AF_UNIX


__all__ = [
    "BaseServer",
    "TCPServer",
    "UDPServer",
    "UnixDatagramServer",
    "UnixStreamServer",
]
