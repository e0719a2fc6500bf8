"""Idle HTTP keep-alive connections, parked in a worker's selector with a deadline each.

A parked connection holds no thread: it waits for the first byte of its next
request (until ``keepalive_timeout``), or for the rest of a head that has
begun (until ``header_timeout``).  The worker's loop resumes it when it turns
readable and calls :meth:`ParkedConnections.expire` every turn; a connection
past its deadline is closed, or answered ``408`` when a head had begun.
"""

from __future__ import annotations

import selectors

from prefork.engine.keepalive import HTTPConnection

__all__ = ["EXPIRY_CHECK", "ParkedConnections"]

#: Seconds between scans of the parked connections for expired deadlines.
EXPIRY_CHECK = 0.1


class ParkedConnections:
    """The connections parked in ``selector`` (each registered with itself as ``data``)."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector
        self._by_fd: dict[int, HTTPConnection] = {}
        #: When :meth:`expire` next scans (the earliest deadline, at most every EXPIRY_CHECK).
        self.next_check = 0.0

    def __len__(self) -> int:
        return len(self._by_fd)

    def park(self, conn: HTTPConnection) -> None:
        """Wait in the selector for ``conn``'s next bytes, until ``conn.deadline``."""
        self._by_fd[conn.fileno()] = conn
        self.selector.register(conn, selectors.EVENT_READ, conn)
        self.next_check = min(self.next_check or conn.deadline, conn.deadline)

    def unpark(self, conn: HTTPConnection) -> None:
        """Take ``conn`` out of the selector (it is readable, or expired)."""
        self.selector.unregister(conn)
        del self._by_fd[conn.fileno()]

    def shorten_deadlines(self, limit: float) -> None:
        """Give every parked connection at most until ``limit`` (a graceful stop)."""
        for conn in self._by_fd.values():
            conn.deadline = min(conn.deadline, limit)
        self.next_check = 0.0

    def expire(self, now: float) -> None:
        """Close idle keep-alive connections and time out heads that never completed.

        Scans at most every :data:`EXPIRY_CHECK` seconds, so that a worker with
        many parked connections does not scan them all on every request.
        """
        if not self._by_fd or now < self.next_check:
            return
        next_check = now + EXPIRY_CHECK
        for conn in list(self._by_fd.values()):
            if now >= conn.deadline:
                self.unpark(conn)
                if conn.pending:
                    conn.reject("408 Request Timeout")
                else:
                    conn.close()
            else:
                next_check = min(next_check, conn.deadline)
        self.next_check = max(next_check, now + EXPIRY_CHECK)
