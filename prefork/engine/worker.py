"""A worker process: the user's server as a threaded sub-server on inherited sockets.

The worker's main thread runs one selector loop; a :class:`~prefork.core.threads.ThreadPool`
of ``threads`` threads handles the requests.  The loop:

* accepts (or receives) only while a thread is idle, so excess connections
  wait in the kernel backlog for whichever worker is free (backpressure);
* parks idle HTTP keep-alive connections in the selector
  (:mod:`prefork.engine.keepalive`), unless the thread that served one holds it for its next
  request while the pool has slack (:mod:`prefork.engine.holding`);
* writes its heartbeat, load and the start of its oldest request into its
  scoreboard slot every turn;
* stops gracefully on ``SIGTERM`` (stop accepting, serve what is already in
  the listen backlog and in flight, within ``graceful_timeout``), at once on
  ``SIGINT``/``SIGQUIT``;
* when the master dies (EOF on a pipe whose write end only the master holds)
  stops accepting, leaves the backlog to whoever binds next, finishes the
  requests it holds within ``graceful_timeout``, then exits (as gunicorn's
  workers do);
* after ``max_requests`` asks the master to replace it, and keeps serving
  until its replacement is ready and the master stops it.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import faulthandler
import logging
import os
import select
import selectors
import signal
import socket
import ssl
import struct
import time
from typing import Any

from prefork.core.threads import ThreadPool
from prefork.core.wakeup import Waker
from prefork.engine.holding import HOLD_TIME, Held, Holders
from prefork.engine.keepalive import (
    Gathered,
    HTTPConnection,
    Outcome,
    drives_http_connections,
    head_complete,
)
from prefork.engine.listeners import listen_backlog
from prefork.engine.logfiles import dump_stream, reopen_log_files
from prefork.engine.parking import ParkedConnections
from prefork.engine.process import ExitCode, Notice, WorkerProcess, encode_notice
from prefork.engine.proxy_protocol import AwaitingHeader, AwaitingHeaders
from prefork.engine.scoreboard import Scoreboard, WorkerSlot, WorkerState
from prefork.engine.signals import SignalQueue
from prefork.engine.tls import serve_tls, tls_context
from prefork.engine.tracebacks import user_traceback
from prefork.engine.trusted import LOCAL_PROXIES, TrustedProxies

logger = logging.getLogger("prefork.worker")  # public: docs/operations.md, Logging

#: Signals a worker acts on: stop gracefully, stop now, reopen logs.
WORKER_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1)
#: Signals meant for the master that a worker ignores (a terminal's HUP or
#: WINCH reaches the whole process group).  Ignored by a Python handler, not
#: SIG_IGN, so that programs the application executes get the defaults back.
IGNORED_SIGNALS = (signal.SIGHUP, signal.SIGWINCH, signal.SIGTTIN, signal.SIGTTOU)
#: The signal that makes a worker write every thread's stack to stderr and go on
#: (``prefork status --stacks``).
STACKS_SIGNAL = signal.SIGUSR2

#: The signal that makes a worker write every thread's stack to stderr and die.
DUMP_SIGNAL = signal.SIGABRT

#: Seconds a stopping worker keeps an idle keep-alive connection open for a last request.
_DRAIN_IDLE_GRACE = 1.0

#: Seconds between a saturated worker's looks at the scoreboard (see _take_overflow).
_OVERFLOW_WAIT = 0.01
#: Connections a saturated worker takes at once when they were left waiting.
_ACCEPT_BATCH = 16

#: The longest a datagram ``get_request`` that does not use MSG_DONTWAIT can block the loop.
_RECEIVE_NET = 0.01

_ACCEPT_ERRORS_TO_BACK_OFF = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class Stop(enum.Enum):
    """Why the worker's loop is ending."""

    GRACEFUL = "graceful"
    FAST = "fast"


class Worker:
    """The loop of one worker process, serving ``servers`` (each with a ``socket``).

    Its size: one selector loop drives accepting with backpressure, the overflow
    rule, parked connections, signals, the master's death and the heartbeat,
    and each of those changes what the others do in the same turn (a stop stops
    accepting and shortens the parked connections' deadlines; a finished job
    may free a thread to listen for).  The parts that keep state of their own
    are elsewhere: the parked connections (:mod:`~prefork.engine.parking`), the
    HTTP connection state machine (:mod:`~prefork.engine.keepalive`), the thread
    pool (:mod:`~prefork.core.threads`) and the notices (:mod:`~prefork.engine.process`).
    """

    def __init__(
        self,
        server: Any,
        process: WorkerProcess,
        slot: WorkerSlot,
        *,
        master_alive_fd: int | None,
        notify_fd: int | None,
        scoreboard: Scoreboard | None = None,
    ) -> None:
        self.server = server
        self.process = process
        self.slot = slot
        self.master_alive_fd = master_alive_fd
        self.notify_fd = notify_fd
        self.scoreboard = scoreboard  # every worker's slot, to see who has idle threads
        self.threads = int(server.threads)
        self.graceful_timeout = float(server.graceful_timeout)
        self.keepalive_timeout = float(server.keepalive_timeout)
        self.header_timeout = float(server.header_timeout)
        self.io_timeout = float(server.io_timeout)
        self.max_requests = _jittered_limit(server.max_requests, server.max_requests_jitter)
        timeout = float(server.worker_timeout)
        self.tick = max(0.05, min(1.0, timeout / 4))
        self.waker = Waker()
        # True while the loop waits in select(): only then must a finished job wake it.
        self.loop_asleep = False
        self.pool: ThreadPool | None = None
        self.selector = selectors.DefaultSelector()
        self.parked = ParkedConnections(self.selector)
        # Pool threads waiting on their connection for its next request (see holding).
        self.holders = Holders()
        self.hold_time = min(HOLD_TIME, self.keepalive_timeout) if self.holders.enabled else 0.0
        self.hold_allowed = False
        #: Connections whose PROXY protocol header is still arriving.
        self.awaiting_proxy = AwaitingHeaders(
            self.selector, self._dispatch_connection, f"worker {process.index}"
        )
        self.to_park: collections.deque[HTTPConnection] = collections.deque()
        self.stop: Stop | None = None
        self.stop_deadline = 0.0
        self.master_gone = False
        self.listening: set[int] = set()  # ids of the servers whose sockets are registered
        self.next_overflow_check = 0.0
        # The other workers' accept counts when the backlog was last seen waiting with
        # every worker saturated; None when that was not the case at the last look.
        self.overflow_seen: tuple[tuple[int, int], ...] | None = None
        self.accepted = 0
        self.accept_paused_until = 0.0
        self.accept_backoff = 0.0
        # The server, and any further servers on other binds (the command line
        # builds one per --bind); the same pool serves them all.
        self.servers = [server, *getattr(server, "extra_servers", ())]
        self.parks_http: dict[int, bool] = {}
        self.tls: dict[int, ssl.SSLContext | None] = {}
        self.nodelay = {id(s): _is_tcp_stream(s.socket) for s in self.servers}
        self.proxy_protocol = {id(s): _proxy_protocol_peers(s) for s in self.servers}
        for each in self.servers:
            each._prefork_worker = self
            if each.socket.type == socket.SOCK_DGRAM:
                _wait_bounded_for_replies(each.socket, self.io_timeout)
            else:
                # Workers share the listening socket: whoever loses the race for a
                # connection must get EAGAIN, not block.
                each.socket.setblocking(False)

    # -- life cycle ---------------------------------------------------------------------------

    def run(self) -> int:
        """Boot, serve until told to stop, and return the process exit code."""
        try:
            # Dumps every thread's stack on DUMP_SIGNAL (and fatal errors) before dying.
            _enable_stack_dumps()
            self.server.post_fork(self.process)
            # After post_fork: it may have installed the handler class.
            # Built after the fork, so a reload (new workers) rereads the certificate files.
            self.tls = {id(s): tls_context(s) for s in self.servers}
            # TLS connections get a thread each: the loop gathers heads on plain sockets only.
            self.parks_http = {
                id(s): drives_http_connections(s) and self.tls[id(s)] is None for s in self.servers
            }
            self.pool = ThreadPool(self.threads, on_done=self._job_done, name="prefork-worker")
        except Exception as exc:
            self._log_boot_failure(exc)
            self._notify(Notice.BOOT_FAILED, f"{type(exc).__name__}: {exc}")
            return ExitCode.BOOT_ERROR
        # Never restored: a worker ends with os._exit, and a default SIGTERM
        # handler back in place would let a second TERM kill it mid-exit.
        self.signals = SignalQueue(WORKER_SIGNALS, self.waker).install()
        self.slot.set_threads(self.pool.size)
        self.slot.set_state(WorkerState.READY)
        self._notify(Notice.READY)
        code = self._serve()
        try:
            self.server.worker_exit(self.process)
        except Exception:
            logger.exception("worker_exit hook failed")
        return code

    def _log_boot_failure(self, exc: Exception) -> None:
        """The user's traceback once per generation; later retries say it in one line."""
        from prefork.errors import ConfigError

        index = self.process.index
        if self.process.retrying_boot:  # the traceback was logged by the first failure
            logger.error("worker %d failed to boot again: %s: %s", index, type(exc).__name__, exc)
            return
        trimmed = getattr(exc, "user_traceback", None) or user_traceback(exc)
        if trimmed:
            logger.error("worker %d failed to boot: %s\n%s", index, exc, trimmed.rstrip("\n"))
        elif isinstance(exc, ConfigError):
            logger.error("worker %d failed to boot: %s", index, exc)
        else:  # nothing of the user's code in it: prefork's own frames are the story
            logger.exception("worker %d failed to boot", index)

    def _serve(self) -> int:
        self.selector.register(self.waker, selectors.EVENT_READ, "waker")
        if self.master_alive_fd is not None:
            self.selector.register(self.master_alive_fd, selectors.EVENT_READ, "master")
        asked_to_recycle = False
        while True:
            assert self.pool is not None
            completed = self.pool.completed
            self._update_listening()
            timeout = self._select_timeout()
            self.loop_asleep = True
            if self.to_park or self.pool.completed != completed:
                timeout = 0.0  # a job finished since the checks above: see to it first
            events = self.selector.select(timeout)
            self.loop_asleep = False
            for key, _ in events:
                tag = key.data
                if tag == "waker":
                    self.waker.drain()
                elif tag == "master":
                    self._master_gone()
                elif isinstance(tag, HTTPConnection):
                    self._resume(tag)
                elif isinstance(tag, AwaitingHeader):
                    self.awaiting_proxy.readable(tag)
                else:
                    self._accept(tag)
            self._handle_signals()
            if self.stop is Stop.FAST:
                return self._exit_code()
            self._park_returned_connections()
            self._update_hold_allowed()
            now = time.monotonic()
            self._take_overflow(now)
            self.parked.expire(now)
            self.awaiting_proxy.expire(now)
            self._heartbeat()
            if not asked_to_recycle and 0 < self.max_requests <= self._completed():
                asked_to_recycle = True
                self.slot.set_state(WorkerState.RECYCLE)
                self._notify(Notice.SERVED_MAX_REQUESTS)
            if self.stop is Stop.GRACEFUL:
                if self._drained():
                    return self._exit_code()
                if now >= self.stop_deadline:
                    self._give_up_on_requests()
                    return self._exit_code()
            else:
                self.server.service_actions()

    def _job_done(self) -> None:
        """A pool thread finished a job (it may have left a connection to park, freed a
        thread to listen for, or drained the worker): wake the loop if it is waiting.

        An awake loop looks at those itself before it waits again (see :meth:`_serve`),
        so under load most jobs end without a write to the wake-up pipe.
        """
        if self.loop_asleep:
            self.waker.wake()

    def _select_timeout(self) -> float:
        timeout = self.tick
        if self.parked:
            timeout = min(timeout, max(0.0, self.parked.next_check - time.monotonic()))
        if (deadline := self.awaiting_proxy.next_deadline()) is not None:
            timeout = min(timeout, max(0.0, deadline - time.monotonic()))
        paused_for = self.accept_paused_until - time.monotonic()
        if paused_for > 0:
            timeout = min(timeout, paused_for)  # wake to listen again when the pause ends
        if self.stop is Stop.GRACEFUL:
            timeout = min(timeout, max(0.0, self.stop_deadline - time.monotonic()))
        elif self.pool is not None and self._free_threads() <= 0 and any(self.parks_http.values()):
            timeout = min(timeout, max(0.0, self.next_overflow_check - time.monotonic()))
        return timeout

    # -- signals ------------------------------------------------------------------------------

    def _handle_signals(self) -> None:
        for sig in self.signals.pop_all():
            if sig in (signal.SIGINT, signal.SIGQUIT):
                self.stop = Stop.FAST
            elif sig == signal.SIGTERM and self.stop is None:
                self._begin_graceful_stop()
            elif sig == signal.SIGUSR1:
                reopened = reopen_log_files()
                _enable_stack_dumps()  # the log file's descriptor changed
                logger.debug("worker %d: reopened %d log file(s)", self.process.index, reopened)

    def _master_gone(self) -> None:
        """The master died: finish what this worker holds, take nothing new, exit.

        The backlog is not drained: with no master to replace the workers, the
        connections waiting there are for whichever server binds the address next.
        """
        assert self.master_alive_fd is not None
        self.selector.unregister(self.master_alive_fd)
        self.master_gone = True
        assert self.pool is not None
        logger.warning(
            "worker %d: master is gone; finishing %d request(s), then exiting",
            self.process.index,
            self.pool.outstanding,
        )
        if self.stop is None:
            self._begin_graceful_stop(drain_backlog=False)

    def _exit_code(self) -> int:
        return ExitCode.MASTER_GONE if self.master_gone else ExitCode.OK

    def _begin_graceful_stop(self, *, drain_backlog: bool = True) -> None:
        """Stop accepting, take what already waits in the backlog, close idle connections."""
        self.stop = Stop.GRACEFUL
        self.stop_deadline = time.monotonic() + self.graceful_timeout
        self.slot.set_state(WorkerState.DRAINING)
        self._set_listening(False)
        self.hold_allowed = False
        self.holders.release_all()
        for server in self.servers:
            if drain_backlog and server.socket.type == socket.SOCK_STREAM:
                self._accept(server, drain_backlog=True)
        # Idle keep-alive connections get a moment to send one last request,
        # answered with "this connection closes", rather than a close that
        # races with a request already on its way.
        grace = time.monotonic() + _DRAIN_IDLE_GRACE
        self.parked.shorten_deadlines(grace)
        self.awaiting_proxy.shorten_deadlines(grace)

    def _drained(self) -> bool:
        assert self.pool is not None
        return (
            self.pool.outstanding == 0
            and not self.parked
            and not self.to_park
            and not self.awaiting_proxy
        )

    def _give_up_on_requests(self) -> None:
        assert self.pool is not None
        logger.error(
            "worker %d: %d request(s) still running after graceful_timeout %.1fs; stacks follow",
            self.process.index,
            self.pool.outstanding,
            self.graceful_timeout,
        )
        stream = dump_stream()
        stream.flush()
        faulthandler.dump_traceback(file=stream, all_threads=True)

    # -- accepting ----------------------------------------------------------------------------

    def _update_listening(self) -> None:
        """Listen while a thread is idle (backpressure)."""
        assert self.pool is not None
        want = self.stop is None and self._free_threads() > 0
        self._set_listening(want and time.monotonic() >= self.accept_paused_until)

    def _take_overflow(self, now: float) -> None:
        """While every worker is saturated, take the connections waiting in the backlog.

        Backpressure leaves a new connection to a worker with an idle thread.
        When every worker is saturated by requests on its keep-alive
        connections, nobody would ever be idle and new connections would starve
        in the backlog.  So every :data:`_OVERFLOW_WAIT` seconds a saturated
        worker looks at the backlog and the scoreboard.  It takes what waits
        only when two looks in a row saw connections waiting, no other worker
        with an idle thread, and no other worker accepting in between.  One
        look is not enough: a worker that serves each connection in a
        millisecond shows as busy from its reply until its loop next runs, by
        which time its client's next connection is already waiting; that
        connection is not starving, and a saturated worker that took it would
        queue it behind its own long requests.  Once taking, it takes
        :data:`_ACCEPT_BATCH` at a time and looks again on its next turn as
        long as whole batches were waiting (a burst of new connections would
        otherwise wait 10 ms per batch: 0.6 s for 1000).  For an HTTP server
        that parks, a connection costs no thread until its head is complete;
        its request then queues behind the ones already waiting, in arrival
        order.
        """
        assert self.pool is not None
        if self.stop is not None or self._free_threads() > 0 or now < self.next_overflow_check:
            return
        self.next_overflow_check = now + _OVERFLOW_WAIT
        if self.scoreboard is None:
            return
        others = self._other_workers_accepted()
        waiting = [
            server
            for server in self.servers
            if self.parks_http.get(id(server)) and select.select([server], [], [], 0)[0]
        ]
        if others is None or not waiting:
            self.overflow_seen = None
            return
        if others != self.overflow_seen:
            self.overflow_seen = others  # the others may yet take it: look again
            return
        for server in waiting:
            if self._accept(server, batch=_ACCEPT_BATCH) >= _ACCEPT_BATCH:
                # A whole batch was waiting, so more may be (a burst of new
                # connections): look again on the next turn, not in 10 ms.
                self.next_overflow_check = now

    def _other_workers_accepted(self) -> tuple[tuple[int, int], ...] | None:
        """Each other worker's accept count; ``None`` if one has an idle thread."""
        assert self.scoreboard is not None
        me = os.getpid()
        counts = []
        for view in self.scoreboard.snapshot():
            if view.pid in (me, 0):
                continue
            if view.state is WorkerState.READY and view.busy < view.threads:
                return None
            counts.append((view.pid, view.accepted))
        return tuple(counts)

    def _set_listening(self, want: bool) -> None:
        for server in self.servers:
            self._listen(server, want)

    def _listen(self, server: Any, want: bool) -> None:
        if want == (id(server) in self.listening):
            return
        if want:
            self.selector.register(server, selectors.EVENT_READ, server)
            self.listening.add(id(server))
        else:
            self.selector.unregister(server)
            self.listening.discard(id(server))

    def _accept(self, server: Any, *, drain_backlog: bool = False, batch: int = 0) -> int:
        """Take requests while threads are idle, or the waiting ones with ``drain_backlog``.

        Returns how many were taken (verified or not).

        A drain takes at most a backlog's worth: under steady load new
        connections keep arriving, and those are for the workers that stay.
        """
        assert self.pool is not None
        budget = _backlog_size(server) if drain_backlog else batch
        taken = 0
        while budget > 0 or self._free_threads() > 0:
            budget -= 1
            try:
                request, client_address = server.get_request()
            except (BlockingIOError, InterruptedError):
                return taken
            except OSError as exc:
                self._accept_failed(exc)
                return taken
            taken += 1
            self.accepted += 1
            self.accept_backoff = 0.0
            if not server.verify_request(request, client_address):
                server.shutdown_request(request)
                continue
            try:
                server.process_request(request, client_address)
            except Exception:
                server.handle_error(request, client_address)
                server.shutdown_request(request)
        return taken

    def _accept_failed(self, exc: OSError) -> None:
        if exc.errno not in _ACCEPT_ERRORS_TO_BACK_OFF:
            logger.debug("worker %d: accept failed: %s", self.process.index, exc)
            return
        # Out of fds or memory: the connection stays in the backlog. Pause
        # accepting (doubling up to 1 s) instead of spinning on a ready socket.
        self.accept_backoff = min(1.0, max(0.01, self.accept_backoff * 2))
        self.accept_paused_until = time.monotonic() + self.accept_backoff
        logger.warning(
            "worker %d: accept failed (%s); pausing %.2fs",
            self.process.index,
            exc.strerror,
            self.accept_backoff,
        )
        self._set_listening(False)

    def dispatch(self, request: Any, client_address: Any, server: Any = None) -> None:
        """Hand a request accepted on ``server`` to the pool (``process_request`` in a worker)."""
        server = self.server if server is None else server
        proxies = self.proxy_protocol[id(server)]
        if proxies is not None and proxies.trusts_peer(client_address):
            deadline = time.monotonic() + self.header_timeout
            self.awaiting_proxy.start(request, client_address, server, deadline)
            return
        self._dispatch_connection(request, client_address, server)

    def _dispatch_connection(self, request: Any, client_address: Any, server: Any) -> None:
        assert self.pool is not None
        if self.nodelay[id(server)]:
            # Responses often leave in two small writes (head, then body); with
            # Nagle's algorithm the second waits for a delayed ACK (40 ms).
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.parks_http[id(server)]:
            # A timeout bounds a slow client's hold on a thread, and makes the fd
            # non-blocking for gathering heads in this loop.
            handler_timeout = getattr(server.RequestHandlerClass, "timeout", None)
            request.settimeout(self.io_timeout if handler_timeout is None else handler_timeout)
            conn = HTTPConnection(server, request, client_address)
            conn.deadline = time.monotonic() + self.header_timeout
            self._gathered(conn, conn.gather(), parked=False)
        elif (context := self.tls.get(id(server))) is not None:
            # The handshake runs on the thread, bounded by header_timeout.
            limit = self.header_timeout
            self._submit(lambda: serve_tls(server, context, request, client_address, limit))
        else:
            self._submit(lambda: server.process_request_thread(request, client_address))

    # -- parked connections -------------------------------------------------------------------

    def _submit(self, job: Any) -> None:
        """Queue ``job`` for the pool; release a holding thread if none is idle to run it."""
        assert self.pool is not None
        self.pool.submit(job)
        if self.pool.idle < 0:
            self.holders.release_one()

    def _free_threads(self) -> int:
        """Threads that can take a job now: the idle ones, and those holding a connection."""
        assert self.pool is not None
        return self.pool.idle + self.holders.count

    def _submit_connection(self, conn: HTTPConnection, *, last: bool = False) -> None:
        assert self.pool is not None
        pool = self.pool

        def serve() -> None:
            while conn.serve(last=last or self.stop is not None) is Outcome.PARK:
                # Hold the connection for its next request only while the pool has slack
                # (see _update_hold_allowed), no job is queued and no pipelined request
                # is already here (parked, it is ready at once).
                if not self.hold_allowed or pool.idle < 0 or head_complete(conn.pending):
                    self.to_park.append(conn)
                    return
                try:
                    held = self.holders.hold(conn, self.hold_time)
                except OSError:  # polling failed: let the selector have it
                    held = Held.PARK
                if held is Held.PARK:
                    self.to_park.append(conn)
                    return
                if held is Held.DONE:
                    return
                pool.restart_clock()  # a new request on the same job

        self._submit(serve)

    def _update_hold_allowed(self) -> None:
        """Whether a thread may hold its connection (each turn of the loop).

        Not while stopping, and not while more connections wait in the selector
        than there are free threads to take them: under that load a thread is
        worth more to the others than to one connection's next request.
        """
        self.hold_allowed = (
            self.hold_time > 0
            and self.stop is None
            and len(self.parked) + len(self.to_park) <= self._free_threads()
        )

    def _park_returned_connections(self) -> None:
        """Park the connections pool threads handed back, waiting for their next request."""
        now = time.monotonic()
        while self.to_park:
            conn = self.to_park.popleft()
            conn.got_first_byte = bool(conn.pending)
            limit = self.header_timeout if conn.pending else self.keepalive_timeout
            if self.stop is not None:
                limit = min(limit, _DRAIN_IDLE_GRACE)
            conn.deadline = now + limit
            self.parked.park(conn)

    def _resume(self, conn: HTTPConnection) -> None:
        """A parked connection is readable: gather what arrived."""
        self._gathered(conn, conn.gather(), parked=True)

    def _gathered(self, conn: HTTPConnection, state: Gathered, *, parked: bool) -> None:
        """Act on what gathering found: serve a complete head, keep waiting, or close."""
        if state is Gathered.WAITING:
            if conn.pending and not conn.got_first_byte:
                # The head has begun: from now on it has header_timeout to complete.
                conn.got_first_byte = True
                conn.deadline = min(conn.deadline, time.monotonic() + self.header_timeout)
            if not parked:
                self.parked.park(conn)
            return
        if parked:
            self.parked.unpark(conn)
        if state is Gathered.HEAD:
            self._submit_connection(conn)
        else:
            conn.end(state)

    # -- reporting ----------------------------------------------------------------------------

    def _completed(self) -> int:
        assert self.pool is not None
        return self.pool.completed

    def _heartbeat(self) -> None:
        assert self.pool is not None
        self.slot.heartbeat(
            busy=max(0, self.pool.outstanding - self.holders.count),
            requests=self.pool.completed,
            oldest_request_start=self.pool.oldest_start(),
            accepted=self.accepted,
        )

    def _notify(self, kind: Notice, detail: str = "") -> None:
        """Tell the master something, in one line (:mod:`prefork.engine.process`)."""
        if self.notify_fd is None:
            return
        line = encode_notice(kind, self.process.index, detail)
        with contextlib.suppress(OSError):  # the master is gone; the loop will notice
            os.write(self.notify_fd, line)


def _enable_stack_dumps() -> None:
    """Dump every thread's stack on DUMP_SIGNAL (and fatal errors) before dying, and on
    STACKS_SIGNAL without dying, into the log file when there is one (else stderr)."""
    stream = dump_stream()
    faulthandler.enable(file=stream, all_threads=True)
    faulthandler.register(STACKS_SIGNAL, file=stream, all_threads=True)


def _jittered_limit(max_requests: int, jitter: int) -> int:
    """``max_requests`` plus a random share of ``jitter``, so workers recycle apart."""
    if not max_requests:
        return 0
    import random

    return max_requests + (random.randint(0, jitter) if jitter > 0 else 0)


def _wait_bounded_for_replies(sock: socket.socket, timeout: float) -> None:
    """Make a shared datagram socket send as the standard library's does, within ``timeout``.

    Replies go out on the socket the requests came in on.  Non-blocking, a reply
    to a client whose queue is full (a Unix datagram client reading late) would
    fail at once with EAGAIN and be lost; blocking, it waits for room, and
    ``SO_SNDTIMEO`` bounds the wait so that a client that never reads holds a
    thread for at most ``timeout``.  Receiving must still never wait (another
    worker may take the datagram first): the servers' ``get_request`` reads with
    ``MSG_DONTWAIT``, and a short ``SO_RCVTIMEO`` bounds a ``get_request`` of the
    application's own that reads without it.
    """
    sock.setblocking(True)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(timeout))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(_RECEIVE_NET))


def _timeval(seconds: float) -> bytes:
    """A ``struct timeval`` for ``SO_SNDTIMEO``/``SO_RCVTIMEO``."""
    whole = int(seconds)
    return struct.pack("@ll", whole, int((seconds - whole) * 1_000_000))


def _proxy_protocol_peers(server: Any) -> TrustedProxies | None:
    """Who must send a PROXY header to ``server``, or ``None`` with ``proxy_protocol`` off."""
    if not getattr(server, "proxy_protocol", False) or server.socket.type != socket.SOCK_STREAM:
        return None
    return TrustedProxies(getattr(server, "proxy_allow_ips", LOCAL_PROXIES))


def _is_tcp_stream(sock: socket.socket) -> bool:
    return sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET, socket.AF_INET6)


def _backlog_size(server: Any) -> int:
    """How many connections can wait in ``server``'s listen backlog."""
    return min(listen_backlog(type(server)), socket.SOMAXCONN)
