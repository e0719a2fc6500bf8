"""Reaping child processes by pid, never with ``waitpid(-1)``.

:class:`ChildProcesses` is the set behind ``ForkingMixIn.active_children`` and
the piece the prefork master uses to reap its workers.  It only ever waits for
pids it was given, so it cannot steal the exit status of a child that another
part of the program (a ``subprocess.Popen``, say) is waiting for.  The standard
library falls back to ``waitpid(-1)`` when it is above ``max_children``; here a
blocking wait for "any of ours" uses pidfds (Linux 5.3+) and otherwise waits for
the oldest child.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import sys
from collections.abc import Callable


class ExitedChild:
    """A reaped child: its pid and raw wait status (``None`` if reaped elsewhere)."""

    __slots__ = ("pid", "status")

    def __init__(self, pid: int, status: int | None) -> None:
        self.pid = pid
        self.status = status

    def __repr__(self) -> str:
        return f"ExitedChild(pid={self.pid}, status={self.status})"

    @property
    def exitcode(self) -> int | None:
        """Exit code, or minus the signal number that killed it (as in subprocess)."""
        if self.status is None:
            return None
        return os.waitstatus_to_exitcode(self.status)

    def describe(self) -> str:
        """A short human-readable reason: ``exit code 3`` or ``killed by SIGKILL``."""
        code = self.exitcode
        if code is None:
            return "reaped elsewhere"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"killed by {name}"
        return f"exit code {code}"


class ChildProcesses(set):
    """The pids of children this process forked and has not reaped yet.

    A ``set`` of ints, so it reads like the standard library's
    ``active_children``; :meth:`reap` and :meth:`wait_below` do the waiting.
    """

    def reap(self, *, blocking: bool = False) -> list[ExitedChild]:
        """Reap the children that have exited; with ``blocking``, wait for all."""
        exited = []
        for pid in sorted(self):
            try:
                got, status = os.waitpid(pid, 0 if blocking else os.WNOHANG)
            except ChildProcessError:
                self.discard(pid)
                exited.append(ExitedChild(pid, None))
                continue
            if got:
                self.discard(pid)
                exited.append(ExitedChild(pid, status))
        return exited

    def wait_below(self, limit: int) -> list[ExitedChild]:
        """Block until fewer than ``limit`` children remain, reaping as they exit."""
        exited: list[ExitedChild] = []
        while self and len(self) >= limit:
            reaped = self.reap()
            if not reaped:
                self.wait_any()
            exited.extend(reaped)
        return exited

    def wait_any(self, timeout: float | None = None) -> None:
        """Block until at least one child has exited (it is not reaped here)."""
        if not self:
            return
        if not hasattr(os, "pidfd_open"):
            self._wait_one()
            return
        with contextlib.ExitStack() as stack, selectors.DefaultSelector() as selector:
            for pid in self:
                try:
                    fd = os.pidfd_open(pid)
                except ProcessLookupError:
                    return  # gone already: a reap will see it
                except OSError:
                    self._wait_one()
                    return
                stack.callback(os.close, fd)
                selector.register(fd, selectors.EVENT_READ)
            selector.select(timeout)

    def _wait_one(self) -> None:
        """Fallback without pidfds: wait for one child, leaving it to be reaped."""
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, min(self), os.WEXITED | os.WNOWAIT)


def fork_child(child_main: Callable[[], int]) -> int:
    """Fork; the child runs ``child_main()`` and leaves with ``os._exit``.

    Returns the child's pid in the parent; never returns in the child, whose
    exit status is what ``child_main`` returned (1 if it raised).  A forked
    child must not return into the parent's stack (it would run the parent's
    ``finally`` blocks and ``atexit`` handlers twice), hence ``os._exit``.
    Standard streams are flushed on both sides, so that text buffered before
    the fork is written once and text the child wrote is not lost.
    """
    _flush_std_streams()
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        status = child_main()
    finally:
        _flush_std_streams()
        os._exit(status)


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
