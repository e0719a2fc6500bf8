"""Concurrency mixins: a process per request, or a thread per request.

Mix one in before a server class, as with the standard library::

    class Server(ForkingMixIn, TCPServer): ...

They compose with the standard library's server classes too
(``class S(ThreadingMixIn, http.server.HTTPServer)``), because they only use
the documented hooks.  The reaping (:class:`~prefork.core.children.ChildProcesses`)
and the request-thread body (:func:`~prefork.core.threads.run_request`) are the same
pieces the prefork engine uses for its workers.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from prefork.core.children import ChildProcesses, flush_std_streams
from prefork.core.server import TCPServer, UDPServer, UnixDatagramServer, UnixStreamServer
from prefork.core.threads import NoThreads, ThreadList, run_request

__all__ = [
    "ForkingMixIn",
    "ForkingTCPServer",
    "ForkingUDPServer",
    "ForkingUnixDatagramServer",
    "ForkingUnixStreamServer",
    "ThreadingMixIn",
    "ThreadingTCPServer",
    "ThreadingUDPServer",
    "ThreadingUnixDatagramServer",
    "ThreadingUnixStreamServer",
]


class ForkingMixIn:
    """Handle each request in a new child process.

    Class attributes: ``max_children`` (above it, the server waits for a child
    to exit before forking another), ``block_on_close`` (``server_close()``
    waits for every child), ``timeout`` (how long ``handle_request()`` waits
    before ``handle_timeout()`` reaps).  ``active_children`` holds the pids not
    yet reaped.  Children are reaped by ``collect_children()``, called from
    ``handle_timeout()`` and ``service_actions()``; only this server's own
    children are ever waited for.
    """

    #: Seconds :meth:`~BaseServer.handle_request` waits for a request before
    #: :meth:`handle_timeout` reaps children.
    timeout: float | None = 300
    #: The pids of children not yet reaped (``None`` before the first fork).
    active_children: ChildProcesses | None = None
    #: With this many children alive, wait for one to exit before forking another.
    max_children: int = 40
    #: :meth:`server_close` waits for every child to exit.
    block_on_close: bool = True

    def collect_children(self, *, blocking: bool = False) -> None:
        """Reap exited children; first wait while there are ``max_children`` or more."""
        children = self.active_children
        if not children:
            return
        if not isinstance(children, ChildProcesses):
            children = self.active_children = ChildProcesses(children)
        children.wait_below(self.max_children)
        children.reap(blocking=blocking)

    def handle_timeout(self) -> None:
        """Reap children after ``timeout`` seconds without a request.  May be extended."""
        self.collect_children()

    def service_actions(self) -> None:
        """Reap children on every turn of the ``serve_forever()`` loop."""
        self.collect_children()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Fork a child that finishes the request; the parent closes its copy."""
        # fork_child's work, written out: between forks, each page the parent writes
        # is shared with live children and gets copied (a page fault, ~2 us); calling
        # fork_child with the request as arguments costs about 6 more per fork (counted
        # with getrusage over 1000 forks), 2-3 % of a server that forks per request.
        flush_std_streams()
        pid = os.fork()
        if not pid:
            status = 1
            try:
                status = self._serve_in_child(request, client_address)
            finally:
                flush_std_streams()
                os._exit(status)
        if self.active_children is None:
            self.active_children = ChildProcesses()
        self.active_children.add(pid)
        self.close_request(request)  # type: ignore[attr-defined]

    def _serve_in_child(self, request: Any, client_address: Any) -> int:
        status = 1
        try:
            self.finish_request(request, client_address)  # type: ignore[attr-defined]
            status = 0
        except Exception:
            self.handle_error(request, client_address)  # type: ignore[attr-defined]
        finally:
            self.shutdown_request(request)  # type: ignore[attr-defined]
        return status

    def server_close(self) -> None:
        """Close the server, then reap children (waiting if ``block_on_close``)."""
        super().server_close()  # type: ignore[misc]
        self.collect_children(blocking=self.block_on_close)


class ThreadingMixIn:
    """Handle each request in a new thread.

    Class attributes: ``daemon_threads`` (request threads do not keep the
    interpreter alive) and ``block_on_close`` (``server_close()`` joins the
    non-daemon request threads).
    """

    #: Request threads are daemon threads: they do not keep the interpreter alive,
    #: and :meth:`server_close` does not wait for them.
    daemon_threads: bool = False
    #: :meth:`server_close` joins the (non-daemon) request threads.
    block_on_close: bool = True
    _threads: Any = NoThreads()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """The body of a request thread: finish, handle errors, shut down."""
        run_request(self, request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start a thread that runs :meth:`process_request_thread`."""
        if self.block_on_close:
            vars(self).setdefault("_threads", ThreadList())
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address)
        )
        thread.daemon = self.daemon_threads
        self._threads.append(thread)
        thread.start()

    def server_close(self) -> None:
        """Close the server, then join the request threads it tracks."""
        super().server_close()  # type: ignore[misc]
        self._threads.join()


class ForkingTCPServer(ForkingMixIn, TCPServer):
    """A TCP server that forks a child per connection."""


class ForkingUDPServer(ForkingMixIn, UDPServer):
    """A UDP server that forks a child per datagram."""


class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer):
    """A Unix stream server that forks a child per connection."""


class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer):
    """A Unix datagram server that forks a child per datagram."""


class ThreadingTCPServer(ThreadingMixIn, TCPServer):
    """A TCP server that starts a thread per connection."""


class ThreadingUDPServer(ThreadingMixIn, UDPServer):
    """A UDP server that starts a thread per datagram."""


class ThreadingUnixStreamServer(ThreadingMixIn, UnixStreamServer):
    """A Unix stream server that starts a thread per connection."""


class ThreadingUnixDatagramServer(ThreadingMixIn, UnixDatagramServer):
    """A Unix datagram server that starts a thread per datagram."""
