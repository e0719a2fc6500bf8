"""Signal handling that only records and wakes.

A handler installed by :class:`SignalQueue` appends the signal to a deque and
makes the process's wakeup pipe readable; the loop that owns the queue does the
work later, outside the handler.  Logging, locking or exiting inside a handler
is how supervisors deadlock (gunicorn's SIGCHLD handler did, for years).

Python only lets the main thread install handlers, so a loop running in another
thread gets an inactive queue and relies on its other wakeups.
"""

from __future__ import annotations

import collections
import contextlib
import signal
import threading
from collections.abc import Iterable
from typing import Any

from prefork.core.wakeup import Waker


def can_install_handlers() -> bool:
    """Whether this thread may install signal handlers (only the main thread may)."""
    return threading.current_thread() is threading.main_thread()


class SignalQueue:
    """Record ``signals`` in a queue while installed, waking ``waker``.

    Use as a context manager: entering installs the handlers (when this is the
    main thread), leaving restores the previous ones and the wakeup fd.
    """

    def __init__(self, signals: Iterable[signal.Signals], waker: Waker) -> None:
        self._signals = tuple(signals)
        self._waker = waker
        self._pending: collections.deque[signal.Signals] = collections.deque()
        self._previous: dict[signal.Signals, Any] = {}
        self._previous_wakeup_fd: int | None = None
        self.active = False

    def _record(self, signum: int, frame: object) -> None:
        self._pending.append(signal.Signals(signum))
        self._waker.wake()

    def __enter__(self) -> SignalQueue:
        return self.install()

    def __exit__(self, *exc_info: object) -> None:
        self.restore()

    def install(self) -> SignalQueue:
        """Install the handlers (only in the main thread; otherwise stay inactive)."""
        if not can_install_handlers():
            return self
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._record)
        # The C-level handler writes to the wakeup fd even while a long Python
        # call delays the Python-level handler; it only needs to wake us.
        self._previous_wakeup_fd = signal.set_wakeup_fd(
            self._waker.write_fileno(), warn_on_full_buffer=False
        )
        self.active = True
        return self

    def restore(self) -> None:
        """Put back the previous handlers and wakeup fd."""
        if not self.active:
            return
        for sig, previous in self._previous.items():
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        signal.set_wakeup_fd(-1 if self._previous_wakeup_fd is None else self._previous_wakeup_fd)
        self._previous.clear()
        self.active = False

    def pop_all(self) -> list[signal.Signals]:
        """The signals received since the last call, oldest first."""
        received = []
        while self._pending:
            received.append(self._pending.popleft())
        return received


def reset_signal_handlers(signals: Iterable[signal.Signals]) -> None:
    """Restore the default disposition of ``signals`` (in a freshly forked child)."""
    signal.set_wakeup_fd(-1)
    for sig in signals:
        signal.signal(sig, signal.SIG_DFL)
