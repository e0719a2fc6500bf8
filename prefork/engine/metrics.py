"""Prometheus metrics, served over HTTP from inside the master's selector loop.

:func:`render` turns the scoreboard and the master's counters into the Prometheus
text exposition format (version 0.0.4).  :class:`MetricsEndpoint` is a tiny HTTP
server that lives in the master's single-threaded loop: every socket is
non-blocking and registered in the master's selector, so it never blocks the
master, never starts a thread, and answers even when every worker is busy or
stuck.  A client gets :data:`CONNECTION_TIMEOUT` seconds, from accept to the
last byte, before it is dropped (a slow or silent client cannot pin it).

Wiring it into a loop::

    endpoint = MetricsEndpoint("127.0.0.1:9100", lambda: render(...))
    endpoint.register(selector)
    while running:
        timeout = poll_interval
        deadline = endpoint.next_deadline()
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - time.monotonic()))
        for key, events in selector.select(timeout):
            if key.data is endpoint:
                endpoint.handle(key, events)
        endpoint.expire(time.monotonic())
    endpoint.close()

A forked child must call :meth:`MetricsEndpoint.close_in_child` (never
:meth:`~MetricsEndpoint.close`), so the sockets it inherited do not keep client
connections or the listener open.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import selectors
import socket
import stat
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import psutil

from prefork.engine.process import Cause
from prefork.engine.scoreboard import SlotView, WorkerState
from prefork.errors import ConfigError

__all__ = [
    "CONNECTION_TIMEOUT",
    "CONTENT_TYPE",
    "MetricsEndpoint",
    "escape_label_value",
    "master_renderer",
    "parse_address",
    "render",
    "worker_rss",
]

logger = logging.getLogger("prefork.metrics")  # public: docs/operations.md, Logging

#: The ``Content-Type`` of the text exposition format served.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Seconds a client connection may live, from accept to the last byte sent.
CONNECTION_TIMEOUT = 2.0
#: The largest request head read; a longer one is answered 431.
MAX_REQUEST_HEAD = 8192
#: Connections open at once; beyond that new clients wait in the listen backlog.
MAX_CONNECTIONS = 64
#: Seconds to stop accepting after the process ran out of file descriptors.
_ACCEPT_PAUSE = 0.1
#: Connections taken per readiness event of the listener (others wait a turn).
_ACCEPTS_PER_EVENT = 16
_ACCEPT_ERRORS_TO_PAUSE = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

#: Worker states shown in ``prefork_workers{state=...}`` (every one, 0 included).
_STATES = [state for state in WorkerState if state is not WorkerState.FREE]


# -- the exposition format ------------------------------------------------------------------


def escape_label_value(value: object) -> str:
    """A label value escaped for the text format: backslash, double quote, newline."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class _Exposition:
    """Builds the text of a scrape, one metric family at a time."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: Mapping[str, object] | None = None) -> None:
        if labels:
            pairs = ",".join(f'{key}="{escape_label_value(val)}"' for key, val in labels.items())
            self.lines.append(f"{name}{{{pairs}}} {_number(value)}")
        else:
            self.lines.append(f"{name} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(
    slots: Sequence[SlotView],
    restarts: Mapping[Any, int],
    target: int,
    rss: Mapping[int, int],
    *,
    retired_requests: int = 0,
) -> str:
    """The Prometheus text exposition (format 0.0.4) of a master's state.

    ``slots`` is the scoreboard's :meth:`~prefork.engine.scoreboard.Scoreboard.snapshot`;
    ``restarts`` counts worker restarts by cause (keys are cause names, or
    ``str`` enums such as :class:`prefork.engine.process.Cause`, whose value is used);
    ``target`` is the number of workers the master aims for; ``rss`` maps a
    worker pid to its resident memory in bytes (see :func:`worker_rss`).

    ``prefork_requests_total`` is ``retired_requests`` (what workers that have
    exited had served, added up by the master as it reaps them) plus the live
    workers' counters.  Without ``retired_requests`` it drops whenever a worker
    is replaced; ``prefork_worker_requests_total``, one series per worker
    process, is a true counter either way.
    """
    live = sorted(slots, key=lambda slot: slot.index)
    workers = [slot for slot in live if slot.pid > 0]
    out = _Exposition()

    out.family("prefork_workers", "gauge", "Worker processes by state.")
    for state in _STATES:
        count = sum(1 for slot in live if slot.state == state)
        out.sample("prefork_workers", count, {"state": state.name.lower()})

    out.family("prefork_workers_target", "gauge", "Worker processes the master aims to run.")
    out.sample("prefork_workers_target", target)

    busy = sum(slot.busy for slot in live)
    idle = sum(max(0, slot.threads - slot.busy) for slot in live)
    out.family("prefork_threads_busy", "gauge", "Request threads busy, all workers together.")
    out.sample("prefork_threads_busy", busy)
    out.family("prefork_threads_idle", "gauge", "Request threads idle, all workers together.")
    out.sample("prefork_threads_idle", idle)

    out.family(
        "prefork_requests_total",
        "counter",
        "Requests served by all workers, including workers that have exited.",
    )
    out.sample("prefork_requests_total", retired_requests + sum(slot.requests for slot in live))

    out.family(
        "prefork_worker_restarts_total",
        "counter",
        "Workers stopped or replaced, by cause.",
    )
    for cause, count in sorted((_cause_name(key), value) for key, value in restarts.items()):
        out.sample("prefork_worker_restarts_total", count, {"cause": cause})

    def per_worker(
        name: str, kind: str, help_text: str, value: Callable[[SlotView], float]
    ) -> None:
        out.family(name, kind, help_text)
        for slot in workers:
            labels = {"pid": slot.pid, "index": slot.index, "generation": slot.generation}
            out.sample(name, value(slot), labels)

    per_worker(
        "prefork_worker_threads_busy", "gauge", "Busy request threads of one worker.", _busy
    )
    per_worker(
        "prefork_worker_threads", "gauge", "Request threads of one worker (its pool size).", _size
    )
    per_worker(
        "prefork_worker_requests_total",
        "counter",
        "Requests served by one worker process (a new series for each new process).",
        _requests,
    )

    out.family(
        "prefork_worker_resident_memory_bytes", "gauge", "Resident memory of one worker, in bytes."
    )
    for slot in workers:
        if slot.pid in rss:
            labels = {"pid": slot.pid, "index": slot.index, "generation": slot.generation}
            out.sample("prefork_worker_resident_memory_bytes", rss[slot.pid], labels)
    return out.text()


def _busy(slot: SlotView) -> int:
    return slot.busy


def _size(slot: SlotView) -> int:
    return slot.threads


def _requests(slot: SlotView) -> int:
    return slot.requests


def _cause_name(key: Any) -> str:
    value = getattr(key, "value", key)
    return str(value)


def worker_rss(pids: Iterable[int]) -> dict[int, int]:
    """Resident memory in bytes of each pid that can be read (a cheap ``/proc`` read each)."""
    found = {}
    for pid in pids:
        if pid <= 0:
            continue
        with contextlib.suppress(psutil.Error):
            found[pid] = psutil.Process(pid).memory_info().rss
    return found


class _MasterLike(Protocol):
    """What :func:`master_renderer` reads of a :class:`prefork.engine.master.Master`."""

    @property
    def scoreboard(self) -> Any:
        """The master's :class:`~prefork.engine.scoreboard.Scoreboard`."""

    @property
    def restarts(self) -> Mapping[Any, int]:
        """Restarts by cause."""

    @property
    def target(self) -> int:
        """The number of workers aimed for."""


def master_renderer(master: _MasterLike) -> Callable[[], str]:
    """A ``render`` callable for :class:`MetricsEndpoint` that reads ``master`` on each scrape.

    Every :class:`~prefork.engine.process.Cause` appears in ``prefork_worker_restarts_total``
    (0 until it happens).  If the master has a ``retired_requests`` attribute (the
    requests of the workers it reaped), ``prefork_requests_total`` includes it.
    """

    def render_master() -> str:
        slots = master.scoreboard.snapshot()
        restarts = {cause.value: 0 for cause in Cause}
        for cause, count in master.restarts.items():
            restarts[_cause_name(cause)] = count
        return render(
            slots,
            restarts,
            master.target,
            worker_rss(slot.pid for slot in slots),
            retired_requests=int(getattr(master, "retired_requests", 0)),
        )

    return render_master


# -- the HTTP endpoint ----------------------------------------------------------------------


def parse_address(address: str | tuple[str, int]) -> tuple[socket.AddressFamily, Any]:
    """The socket family and bind address of ``"HOST:PORT"``, ``"[V6]:PORT"`` or ``"unix:PATH"``.

    A tuple ``(host, port)`` is taken as it is.  An empty host (``":9100"``) is
    every IPv4 interface; a Unix socket path is made absolute.  Raises
    :class:`ConfigError` for anything else.
    """
    if isinstance(address, tuple):
        host, port = address
        return _inet_family(str(host), int(port)), (str(host), int(port))
    if address.startswith("unix:"):
        path = address[len("unix:") :]
        if not path:
            raise ConfigError(f"metrics address {address!r}: no socket path after 'unix:'")
        return socket.AF_UNIX, os.path.abspath(path)  # a later chdir must not move it
    if address.startswith("["):
        host, bracket, port_text = address[1:].partition("]:")
        if not bracket or not host:
            raise ConfigError(f"metrics address {address!r}: expected [HOST]:PORT")
    else:
        host, colon, port_text = address.rpartition(":")
        if not colon:
            raise ConfigError(
                f"metrics address {address!r}: expected HOST:PORT, [HOST]:PORT or unix:PATH"
            )
        if ":" in host:
            raise ConfigError(f"metrics address {address!r}: write an IPv6 host as [HOST]:PORT")
        host = host or "0.0.0.0"
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"metrics address {address!r}: bad port {port_text!r}")
    return _inet_family(host, int(port_text)), (host, int(port_text))


def _inet_family(host: str, port: int) -> socket.AddressFamily:
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"metrics address {host}:{port}: {exc.strerror}") from None
    return infos[0][0]


_READING, _WRITING, _LINGERING = "reading", "writing", "lingering"

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


class _Connection:
    """One client: its socket, when it was accepted, and what is left to read or write."""

    __slots__ = ("accepted_at", "head", "out", "phase", "sent", "sock")

    def __init__(self, sock: socket.socket, accepted_at: float) -> None:
        self.sock = sock
        self.accepted_at = accepted_at
        self.head = bytearray()
        self.out = b""
        self.sent = 0
        self.phase = _READING


class MetricsEndpoint:
    """An HTTP endpoint serving ``GET /metrics`` from inside a single-threaded selector loop.

    ``address`` is ``"HOST:PORT"``, ``"[V6]:PORT"``, ``"unix:PATH"`` or a
    ``(host, port)`` tuple (port 0 picks a free port: see :attr:`address`);
    ``render`` returns the body of each scrape.  Binding happens in the
    constructor; a failure raises :class:`ConfigError`.  ``reuse_port`` sets
    ``SO_REUSEPORT``, so that a new master can bind the same address while the
    old one still runs (a zero-downtime upgrade).  ``timeout`` bounds a
    connection's life; past ``max_connections`` open at once, new clients wait
    in the listen backlog.

    Every socket is non-blocking and registered with ``data=self``: the loop
    passes each ready key whose ``data`` is the endpoint to :meth:`handle`, calls
    :meth:`expire` every turn, and bounds its wait by :meth:`next_deadline`.
    ``GET /metrics`` (and ``HEAD``) is answered 200, any other path 404, any other
    method 405; every response closes the connection.

    Its size: it is a small HTTP server that must never block the master's
    loop, so each connection is a state machine (accept, read the head, answer,
    write, linger before closing) over one connection table and one selector;
    the text it serves is rendered elsewhere in this module (:func:`render`,
    :func:`master_renderer`).
    """

    def __init__(
        self,
        address: str | tuple[str, int],
        render: Callable[[], str],
        *,
        timeout: float = CONNECTION_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        reuse_port: bool = False,
    ) -> None:
        self.render = render
        self.timeout = timeout
        self.max_connections = max_connections
        self.selector: selectors.BaseSelector | None = None
        self._connections: dict[int, _Connection] = {}
        self._listening = False
        self._paused_until = 0.0
        self._unix_path: str | None = None
        self._unix_identity: tuple[int, int] | None = None
        family, bind_address = parse_address(address)
        self._listener = self._bind(family, bind_address, address, reuse_port)

    def _bind(
        self, family: socket.AddressFamily, bind_address: Any, shown: object, reuse_port: bool
    ) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family == socket.AF_UNIX:
                _remove_stale_unix_socket(bind_address)
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(bind_address)
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
            if family == socket.AF_UNIX:
                info = os.stat(bind_address)
                self._unix_path = bind_address
                self._unix_identity = (info.st_dev, info.st_ino)
        except OSError as exc:
            sock.close()
            reason = exc.strerror or str(exc)
            raise ConfigError(f"cannot bind metrics endpoint {shown}: {reason}") from None
        return sock

    # -- what the loop calls ----------------------------------------------------------------

    @property
    def address(self) -> Any:
        """The bound address: ``(host, port, ...)`` for TCP, the path for a Unix socket."""
        return self._listener.getsockname()

    @property
    def open_connections(self) -> int:
        """Client connections currently open."""
        return len(self._connections)

    def fileno(self) -> int:
        """The listening socket's file descriptor."""
        return self._listener.fileno()

    def register(self, selector: selectors.BaseSelector) -> None:
        """Start serving: register the listening socket in ``selector`` with ``data=self``."""
        self.selector = selector
        self._set_listening(True)

    def handle(self, key: selectors.SelectorKey, events: int) -> None:
        """Act on a ready key whose ``data`` is this endpoint (never blocks)."""
        if key.fileobj is self._listener:
            self._accept()
            return
        conn = self._connections.get(key.fd)
        if conn is None or conn.sock is not key.fileobj:
            return  # closed earlier in this turn
        if conn.phase == _READING:
            self._read_head(conn)
        elif conn.phase == _WRITING:
            self._write(conn)
        else:
            self._linger(conn)

    def expire(self, now: float) -> int:
        """Drop connections older than the timeout and resume a paused listener; returns drops."""
        expired = [c for c in self._connections.values() if now - c.accepted_at >= self.timeout]
        for conn in expired:
            if conn.phase == _READING:
                logger.debug("metrics: dropping a client that sent no request in time")
            self._close_connection(conn)
        if self._paused_until and now >= self._paused_until:
            self._paused_until = 0.0
            self._update_listening()
        return len(expired)

    def next_deadline(self) -> float | None:
        """The ``time.monotonic()`` by which :meth:`expire` has work, or ``None``."""
        deadlines = [conn.accepted_at + self.timeout for conn in self._connections.values()]
        if self._paused_until:
            deadlines.append(self._paused_until)
        return min(deadlines, default=None)

    def close(self) -> None:
        """Close every connection and the listener, and remove a Unix socket file (idempotent)."""
        for conn in list(self._connections.values()):
            self._close_connection(conn, resume=False)
        if self._listener.fileno() < 0:
            return
        self._set_listening(False)
        self._listener.close()
        if self._unix_path is not None and self._unix_identity is not None:
            with contextlib.suppress(OSError):
                info = os.stat(self._unix_path)
                if (info.st_dev, info.st_ino) == self._unix_identity:
                    os.unlink(self._unix_path)  # still ours: not replaced by another process
        self._unix_path = self._unix_identity = None
        self.selector = None

    def close_in_child(self) -> None:
        """In a forked child: close the inherited sockets only.

        The selector (shared with the parent, for epoll) is left alone and the Unix
        socket file stays: both still belong to the parent.
        """
        for conn in self._connections.values():
            conn.sock.close()
        self._connections.clear()
        self._listener.close()
        self._unix_path = self._unix_identity = None
        self.selector = None
        self._listening = False

    # -- accepting --------------------------------------------------------------------------

    def _set_listening(self, want: bool) -> None:
        if want == self._listening or self.selector is None:
            return
        if want:
            self.selector.register(self._listener, selectors.EVENT_READ, self)
        else:
            self.selector.unregister(self._listener)
        self._listening = want

    def _update_listening(self) -> None:
        room = len(self._connections) < self.max_connections
        self._set_listening(room and not self._paused_until)

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_EVENT):
            if len(self._connections) >= self.max_connections:
                break
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in _ACCEPT_ERRORS_TO_PAUSE:
                    logger.warning("metrics: accept failed (%s); pausing", exc.strerror)
                    self._paused_until = time.monotonic() + _ACCEPT_PAUSE
                    break
                continue  # ECONNABORTED and the like: that client is gone
            sock.setblocking(False)
            conn = _Connection(sock, time.monotonic())
            self._connections[sock.fileno()] = conn
            assert self.selector is not None
            self.selector.register(sock, selectors.EVENT_READ, self)
        self._update_listening()

    def _close_connection(self, conn: _Connection, *, resume: bool = True) -> None:
        if self._connections.pop(conn.sock.fileno(), None) is None:
            return
        if self.selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(conn.sock)
        conn.sock.close()
        if resume:
            self._update_listening()

    # -- one exchange -----------------------------------------------------------------------

    def _read_head(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(MAX_REQUEST_HEAD - len(conn.head))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_connection(conn)
            return
        if not data:  # the client gave up before the end of its request
            self._close_connection(conn)
            return
        conn.head += data
        end = _end_of_head(conn.head)
        if end >= 0:
            self._respond(conn, *self._answer(bytes(conn.head[:end])))
        elif len(conn.head) >= MAX_REQUEST_HEAD:
            self._respond(conn, 431, b"request head too large\n", "text/plain", send_body=True)

    def _answer(self, head: bytes) -> tuple[int, bytes, str, bool]:
        """Status, body, content type and whether to send the body, for a request head."""
        request_line = head.split(b"\n", 1)[0].rstrip(b"\r")
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return 400, b"bad request\n", "text/plain", True
        method, target = parts[0], parts[1]
        if method not in (b"GET", b"HEAD"):
            return 405, b"method not allowed\n", "text/plain", True
        send_body = method == b"GET"
        if target.split(b"?", 1)[0] != b"/metrics":
            return 404, b"not found: try /metrics\n", "text/plain", send_body
        try:
            body = self.render().encode("utf-8")
        except Exception:
            logger.exception("metrics: rendering failed")
            return 500, b"rendering the metrics failed\n", "text/plain", send_body
        return 200, body, CONTENT_TYPE, send_body

    def _respond(
        self, conn: _Connection, status: int, body: bytes, content_type: str, send_body: bool
    ) -> None:
        headers = [
            f"HTTP/1.1 {status} {_REASONS[status]}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        if status == 405:
            headers.append("Allow: GET, HEAD")
        head = ("\r\n".join(headers) + "\r\n\r\n").encode("ascii")
        conn.out = head + body if send_body else head
        conn.phase = _WRITING
        assert self.selector is not None
        self.selector.modify(conn.sock, selectors.EVENT_WRITE, self)
        self._write(conn)

    def _write(self, conn: _Connection) -> None:
        view = memoryview(conn.out)
        while conn.sent < len(view):
            try:
                conn.sent += conn.sock.send(view[conn.sent :])
            except (BlockingIOError, InterruptedError):
                return  # the selector says when there is room
            except OSError:
                self._close_connection(conn)
                return
        # Sent: half-close, then read until the client closes (a lingering close),
        # so that request bytes still unread do not turn our close into a reset
        # that could destroy the response before the client read it.
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)
        conn.phase = _LINGERING
        conn.out = b""
        assert self.selector is not None
        self.selector.modify(conn.sock, selectors.EVENT_READ, self)
        self._linger(conn)

    def _linger(self, conn: _Connection) -> None:
        for _ in range(4):  # bounded: a client that keeps sending waits for the next turn
            try:
                data = conn.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._close_connection(conn)
                return


def _end_of_head(head: bytearray) -> int:
    """Where the request head ends (before its blank line), or -1 if it has not yet."""
    ends = [index for index in (head.find(b"\r\n\r\n"), head.find(b"\n\n")) if index >= 0]
    return min(ends, default=-1)


def _remove_stale_unix_socket(path: str) -> None:
    """Remove a socket file at ``path`` that nothing listens on any more (a crashed master).

    Anything else there (a listening socket, a regular file) is left for ``bind``
    to fail on.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        except OSError:
            return
