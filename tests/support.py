"""Shared helpers for the prefork test suite: waiting, serving, clients, paths."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psutil

from prefork.engine.scoreboard import SlotView, WorkerState

LOCALHOST = "127.0.0.1"
TIMEOUT = 10.0
"""Deadline for any single blocking operation in a test."""

S = TypeVar("S")


def wait_for(
    predicate: Callable[[], object],
    timeout: float = TIMEOUT,
    message: str = "condition",
    interval: float = 0.005,
) -> None:
    """Poll ``predicate`` until it is true; fail with ``message`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {message}")
        time.sleep(interval)


@contextlib.contextmanager
def serving(server: S, poll_interval: float = 0.05) -> Iterator[S]:
    """Run ``server.serve_forever`` in a thread; always shut down, close and join."""
    thread = threading.Thread(
        target=server.serve_forever,  # type: ignore[attr-defined]
        kwargs={"poll_interval": poll_interval},
        name="serve_forever",
    )
    try:
        thread.start()
        server.serve_thread = thread  # type: ignore[attr-defined]
        yield server
    finally:
        try:
            if thread.is_alive():
                shutdown_within(server, TIMEOUT)
        finally:
            server.server_close()  # type: ignore[attr-defined]
            thread.join(TIMEOUT)
    assert not thread.is_alive(), "serve_forever thread did not stop"


def shutdown_within(server: Any, timeout: float) -> None:
    """Call ``server.shutdown()`` but fail (instead of hanging) if it takes over ``timeout``."""
    stopper = threading.Thread(target=server.shutdown, name="shutdown", daemon=True)
    stopper.start()
    stopper.join(timeout)
    if stopper.is_alive():
        raise AssertionError(f"shutdown() did not return within {timeout:.0f}s")


@contextlib.contextmanager
def closing_server(server: S) -> Iterator[S]:
    """Close ``server`` on exit (for tests that drive ``handle_request`` themselves)."""
    try:
        yield server
    finally:
        server.server_close()  # type: ignore[attr-defined]


def connect(address: Any, family: int = socket.AF_INET) -> socket.socket:
    """Open a stream connection to ``address`` with a timeout on every call."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def recv_all(sock: socket.socket) -> bytes:
    """Read from ``sock`` until EOF (the socket must have a timeout)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def stream_exchange(address: Any, data: bytes, family: int = socket.AF_INET) -> bytes:
    """Send ``data``, half-close, and return everything the server sends until EOF."""
    with connect(address, family) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return recv_all(sock)


def read_until_closed(address: Any, family: int = socket.AF_INET) -> bytes:
    """Connect, send nothing, and return what arrives before the server closes.

    Sending nothing matters when the server drops a connection unread: closing a
    socket with unread input sends RST, and the client would see a reset (or a
    failed send) instead of a clean EOF, depending on timing.
    """
    with connect(address, family) as sock:
        return recv_all(sock)


def datagram_exchange(
    address: Any,
    data: bytes,
    family: int = socket.AF_INET,
    bind: Any = None,
) -> bytes:
    """Send one datagram to ``address`` and return the reply datagram."""
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        if bind is not None:
            sock.bind(bind)
        sock.sendto(data, address)
        reply, _ = sock.recvfrom(65536)
        return reply


@contextlib.contextmanager
def in_call(thread: threading.Thread, name: str, filename: str) -> bool:
    """True if ``thread`` is currently inside function ``name`` defined in ``filename``.

    Used to know that a thread has reached a blocking wait (a selector's
    ``select``, an ``Event.wait``) before poking it, without sleeping.
    """
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == name and frame.f_code.co_filename == filename:
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def short_tmpdir() -> Iterator[str]:
    """A private directory under /tmp short enough for Unix socket paths."""
    path = tempfile.mkdtemp(prefix="pf-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def ipv6_available() -> bool:
    """True if a socket can be bound on ``::1``."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def num_fds() -> int:
    """Number of file descriptors open in this process."""
    return psutil.Process().num_fds()


def fd_table() -> dict[int, str]:
    """Map of this process's open fds to what they point at (for failure messages)."""
    table = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            table[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return table


def zombies() -> list[psutil.Process]:
    """Children of this process that have exited but were not reaped."""
    found = []
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.status() == psutil.STATUS_ZOMBIE:
                found.append(child)
    return found


def is_zombie(pid: int) -> bool:
    """True if ``pid`` exists and is a zombie (exited, not yet reaped)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def in_forked_child(body: Callable[[], str]) -> str:
    """Run ``body`` in a forked child; return what it returned (or its exception)."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() with threads; the child only makes system
        # calls and leaves with os._exit.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            try:
                result = body()
            except BaseException as exc:
                result = f"{type(exc).__name__}: {exc}"
            os.write(write_end, result.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], TIMEOUT)
        assert ready, "the child did not report"
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return b"".join(chunks).decode()


def slot_view(index: int, pid: int, **fields: Any) -> SlotView:
    """A scoreboard slot as ``Scoreboard.read`` returns it: a ready, idle worker of
    generation 1 with 4 threads, but for ``fields``."""
    values: dict[str, Any] = {
        "generation": 1,
        "state": WorkerState.READY,
        "requests": 0,
        "busy": 0,
        "threads": 4,
        "heartbeat": 0.0,
        "oldest_request_start": 0.0,
    }
    values.update(fields)
    return SlotView(index=index, pid=pid, **values)
