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
        # In a forking server this runs between forks, while the parent's pages are
        # shared with live children: every object written costs a page copy, so the
        # pids are not sorted (the standard library's order is the set's too).
        for pid in tuple(self):
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
            # With nothing reaped, every pid left is a live child of ours (reap()
            # dropped those reaped elsewhere), so a wait for any child of this process
            # ends when one of them exits: one system call, where wait_any() opens a
            # pidfd per child.  If the child it saw exit is not ours, wait_any() after all.
            if not reaped and self._peek_any_exited() not in self:
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

    def _peek_any_exited(self) -> int | None:
        """Block until some child of this process has exited; its pid, left unreaped.

        One system call, like the standard library's ``waitpid(-1)``, but ``WNOWAIT``
        leaves the child to whoever owns it.  ``None`` if this process has no child
        (or no ``waitid``).
        """
        if not hasattr(os, "waitid"):
            return None
        try:
            result = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            return None
        return result.si_pid if result is not None else None

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
    flush_std_streams()
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        status = child_main()
    finally:
        flush_std_streams()
        os._exit(status)


def flush_std_streams() -> None:
    """Flush ``sys.stdout`` and ``sys.stderr``, ignoring a closed or broken stream."""
    # try/except rather than contextlib.suppress: see the note in reap().
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # a closed or broken stream must not stop the fork
            pass
