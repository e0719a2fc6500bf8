"""``PreforkMixIn``: a supervised pool of worker processes, each a threaded sub-server.

Mix it in first, as with the standard library's mixins::

    class Server(PreforkMixIn, http.server.HTTPServer):
        workers = 4
        threads = 8

The constructor binds in the calling process as usual.  ``serve_forever()``
then becomes the master's supervision loop (see :mod:`prefork.engine.master`): it
forks ``workers`` processes which accept on the inherited socket and run the
usual hooks (``get_request``, ``verify_request``, ``process_request``,
``finish_request``, ``handle_error``, ``service_actions``...) with a pool of
``threads`` threads.  ``shutdown()`` (from another thread) or ``SIGTERM``
stops it gracefully; ``server_close()`` stops and reaps every worker, then
closes the socket.

The grace model, the same for every kind of server: a worker whose loop has
not written its heartbeat for ``worker_timeout`` seconds, or one of whose
requests has run that long, is *stuck*.  It is retired: a replacement starts
at once, the stuck worker stops accepting, its other requests get
``graceful_timeout`` seconds to finish, then its threads' stacks are dumped to
its stderr and it is killed.  Any graceful stop (``SIGTERM``, ``HUP`` of an
old generation, ``max_requests`` recycling, ``TTOU``) gives in-flight requests
the same ``graceful_timeout``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from prefork.core.server import TCPServer, UDPServer, UnixDatagramServer, UnixStreamServer
from prefork.core.threads import run_request
from prefork.engine.listeners import listen_backlog
from prefork.engine.master import BootError, Master
from prefork.engine.process import WorkerProcess
from prefork.engine.trusted import LOCAL_PROXIES

logger = logging.getLogger("prefork.engine")  # public: docs/operations.md, Logging

__all__ = [
    "BootError",
    "PreforkMixIn",
    "PreforkTCPServer",
    "PreforkUDPServer",
    "PreforkUnixDatagramServer",
    "PreforkUnixStreamServer",
]

_SETTINGS = (
    "workers",
    "threads",
    "worker_timeout",
    "graceful_timeout",
    "keepalive_timeout",
    "header_timeout",
    "io_timeout",
    "max_requests",
    "max_requests_jitter",
    "rolling_reload",
    "max_boot_failures",
    "max_worker_memory",
    "metrics_bind",
    "proxy_protocol",
    "proxy_allow_ips",
    "proc_name",
)


class PreforkMixIn:
    """Serve with a master process supervising ``workers`` x ``threads``.

    Settings are class attributes (override them in a subclass) or keyword
    arguments of the constructor:

    ``workers``
        worker processes (default: the number of CPUs).
    ``threads``
        threads per worker; a worker accepts only while one is idle.
    ``worker_timeout``
        seconds without a heartbeat, or for one request, before a worker is
        stuck (``timeout`` keeps its ``handle_request()`` meaning).
    ``graceful_timeout``
        seconds a stopping worker gets to finish its requests.
    ``keepalive_timeout``
        seconds an idle HTTP keep-alive connection stays parked.
    ``header_timeout``
        seconds an HTTP request head may take to arrive once begun (a new
        connection has as long to start one); then ``408``.
    ``io_timeout``
        socket timeout of HTTP connections while a thread serves them, for
        handlers that set no ``timeout`` of their own: bounds how long a slow
        client can hold a thread.
    ``max_requests``, ``max_requests_jitter``
        recycle a worker after this many requests (plus up to jitter more);
        0 disables.
    ``rolling_reload``
        on ``HUP``, replace one worker at a time instead of a whole
        generation at once.
    ``max_boot_failures``
        consecutive workers dying before they are ready after which the
        master stops and ``serve_forever()`` raises :class:`BootError`.
    ``max_worker_memory``
        bytes of resident memory past which a worker is gracefully replaced
        (checked every second; 0 disables).
    ``metrics_bind``
        ``HOST:PORT`` or ``unix:PATH`` where the master serves Prometheus
        metrics of the scoreboard (answered even when every worker is stuck).
    ``proxy_protocol``, ``proxy_allow_ips``
        a stream connection from a peer in ``proxy_allow_ips`` (addresses and
        networks, comma-separated, or ``*``; default ``127.0.0.1,::1``) must
        start with a PROXY protocol header, version 1 or 2, whose source
        address the handler then gets as ``client_address``
        (:mod:`prefork.engine.proxy_protocol`).
    ``proc_name``
        shown in process titles.

    Hooks, called with the :class:`~prefork.engine.process.WorkerProcess` concerned:
    ``when_ready()`` (master, before the first fork), ``pre_fork(worker)``
    (master), ``post_fork(worker)`` (in the new worker, before it serves: load
    the application here; an exception is a boot failure),
    ``worker_exit(worker)`` (in the worker, as it exits) and ``on_reload()``
    (master, on ``HUP``).
    """

    workers: int | None = None
    threads: int = 4
    worker_timeout: float = 30.0
    graceful_timeout: float = 30.0
    keepalive_timeout: float = 5.0
    header_timeout: float = 30.0
    io_timeout: float = 30.0
    max_requests: int = 0
    max_requests_jitter: int = 0
    rolling_reload: bool = False
    max_boot_failures: int = 10
    max_worker_memory: int = 0
    metrics_bind: str | None = None
    proxy_protocol: bool = False
    proxy_allow_ips: str = LOCAL_PROXIES
    proc_name: str | None = None

    _prefork_worker: Any = None
    #: Servers on further binds, served by the same workers (the command line sets it).
    extra_servers: tuple[Any, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Take the settings given as keywords, then build the server as usual."""
        for name in _SETTINGS:
            if name in kwargs:
                setattr(self, name, kwargs.pop(name))
        self._prefork_master: Master | None = None
        self._prefork_lock = threading.Lock()
        self._prefork_stopped = threading.Event()
        self._prefork_stopped.set()
        self._prefork_shutdown_early = False
        super().__init__(*args, **kwargs)

    def configured_workers(self) -> int:
        """The number of workers to run (``workers``, or the CPU count when unset)."""
        if self.workers is None:
            return max(1, os.cpu_count() or 1)
        return int(self.workers)

    # -- socket ---------------------------------------------------------------------------

    def server_activate(self) -> None:
        """Listen with a real backlog unless the class chose its own."""
        sock = self.socket  # type: ignore[attr-defined]
        if sock.type == socket.SOCK_STREAM:
            sock.listen(listen_backlog(type(self)))
        else:
            super().server_activate()  # type: ignore[misc]

    # -- serving --------------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Fork the workers and supervise them until ``shutdown()`` or a stop signal.

        Raises :class:`BootError` if workers keep dying before they are ready.
        """
        with self._prefork_lock:
            self._prefork_stopped.clear()
            self._prefork_master = master = Master(self)
            if self._prefork_shutdown_early:
                master.request_stop()
        try:
            master.run(poll_interval)
        finally:
            with self._prefork_lock:
                self._prefork_master = None
                self._prefork_shutdown_early = False
            master.close()
            self._prefork_stopped.set()

    def shutdown(self) -> None:
        """Stop ``serve_forever()`` gracefully and wait until its workers are gone."""
        with self._prefork_lock:
            if self._prefork_master is None:
                self._prefork_shutdown_early = True
            else:
                self._prefork_master.request_stop()
        self._prefork_stopped.wait()

    def process_request(self, request: Any, client_address: Any) -> None:
        """In a worker, hand the request to a pool thread; elsewhere, serve it inline."""
        worker = self._prefork_worker
        if worker is not None:
            worker.dispatch(request, client_address, self)
        else:
            run_request(self, request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """The body of a worker thread's job: finish, handle errors, shut down."""
        run_request(self, request, client_address)

    def server_close(self) -> None:
        """Stop the workers (if still serving), then close the socket."""
        with self._prefork_lock:
            serving = self._prefork_master is not None
        if serving:
            self.shutdown()
        super().server_close()  # type: ignore[misc]
        for extra in self.extra_servers:
            extra.server_close()

    # -- hooks ----------------------------------------------------------------------------

    def when_ready(self) -> None:
        """Called in the master once it is about to fork the first workers."""

    def pre_fork(self, worker: WorkerProcess) -> None:
        """Called in the master just before ``worker`` is forked."""

    def post_fork(self, worker: WorkerProcess) -> None:
        """Called in a new worker before it serves; an exception is a boot failure."""

    def worker_exit(self, worker: WorkerProcess) -> None:
        """Called in a worker as it exits."""

    def on_reload(self) -> None:
        """Called in the master when a reload (``HUP``) starts, before the new generation."""

    def workers_ready(self) -> None:
        """Called in the master whenever every worker of the current generation is ready
        (after start, a reload, scaling or a replacement) and no old one remains."""

    def on_shutdown(self) -> None:
        """Called in the master when a stop (graceful or fast) begins."""

    def on_upgrade(self, master: Master) -> None:
        """Called in the master on ``USR2`` with the running master.

        The ``prefork`` command overrides it to start a new master on the same
        sockets; by default ``USR2`` is logged and ignored.
        """
        logger.warning("USR2 ignored: a zero-downtime upgrade needs the prefork command")

    def master_service_actions(self) -> None:
        """Called in the master on every turn of its loop (at least every ``poll_interval``)."""


class PreforkTCPServer(PreforkMixIn, TCPServer):
    """A TCP server with a pool of worker processes."""


class PreforkUDPServer(PreforkMixIn, UDPServer):
    """A UDP server whose worker processes receive from the shared socket."""


class PreforkUnixStreamServer(PreforkMixIn, UnixStreamServer):
    """A Unix stream server with a pool of worker processes."""


class PreforkUnixDatagramServer(PreforkMixIn, UnixDatagramServer):
    """A Unix datagram server whose worker processes receive from the shared socket."""
