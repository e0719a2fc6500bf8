"""A pool thread that keeps its keep-alive connection for a moment, while the pool has slack.

After a response, a connection's next request usually arrives within a round
trip.  Parked in the worker's selector, that request crosses two threads: the
loop wakes to gather it, and wakes a pool thread to serve it (two wake-ups and
two hand-offs of the GIL).  So when no job is waiting for a thread, the thread
that served the connection *holds* it instead: it waits on the connection
itself, for at most :data:`HOLD_TIME`, and serves the next request at once, as
a thread-per-connection server would.

A holding thread is not taken from the pool: the worker counts holders as free
(they listen and accept on their behalf), and when a job is queued with no
idle thread to run it, :meth:`Holders.release_one` makes one holder hand its
connection to the selector and go back to the pool.  The release is a token in
an ``eventfd`` in semaphore mode that every holder polls beside its
connection: one token frees exactly one holder.
"""

from __future__ import annotations

import enum
import os
import select
import threading
import time

from prefork.engine.keepalive import Gathered, HTTPConnection

__all__ = ["HOLD_TIME", "Held", "Holders"]

#: The longest a thread holds a connection that sends nothing, in seconds.
HOLD_TIME = 0.05

_READABLE = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP


class Held(enum.Enum):
    """How holding a connection ended."""

    HEAD = "head"  # a complete request head is gathered: serve it
    PARK = "park"  # nothing came in time, or the thread was released: park it
    DONE = "done"  # the client closed, or sent too much: the connection is finished


class Holders:
    """The threads of one worker that hold a connection, and the way to release one.

    Only where ``os.eventfd`` exists (Linux); elsewhere :attr:`enabled` is false.
    """

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self._release_fd = -1
        if hasattr(os, "eventfd"):
            flags = os.EFD_SEMAPHORE | os.EFD_NONBLOCK | os.EFD_CLOEXEC
            self._release_fd = os.eventfd(0, flags)

    @property
    def enabled(self) -> bool:
        """Whether threads may hold connections here."""
        return self._release_fd >= 0

    def release_one(self) -> None:
        """Make one holder (if any) park its connection and return to the pool."""
        if self.count:
            os.eventfd_write(self._release_fd, 1)

    def release_all(self) -> None:
        """Make every holder park its connection (the worker is stopping)."""
        if self.count:
            os.eventfd_write(self._release_fd, self.count)

    def hold(self, conn: HTTPConnection, limit: float = HOLD_TIME) -> Held:
        """Wait on ``conn`` (a pool thread) until a head completes, ``limit`` passes, or a
        release comes; gather what arrives."""
        poller = select.poll()
        poller.register(conn.fileno(), _READABLE)
        poller.register(self._release_fd, select.POLLIN)
        with self._lock:
            self.count += 1
        try:
            deadline = time.monotonic() + limit
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return Held.PARK
                readable = False
                for fd, _ in poller.poll(remaining * 1000):
                    if fd != self._release_fd:
                        readable = True
                        continue
                    try:
                        os.eventfd_read(self._release_fd)
                    except BlockingIOError:
                        continue  # another holder took the token
                    return Held.PARK
                if not readable:
                    continue
                state = conn.gather()
                if state is Gathered.HEAD:
                    return Held.HEAD
                if state is not Gathered.WAITING:
                    conn.end(state)
                    return Held.DONE
        finally:
            with self._lock:
                self.count -= 1
