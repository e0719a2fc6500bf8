"""Request threads: the bookkeeping ``ThreadingMixIn`` and the engine share.

:func:`run_request` is the life of one request off the accepting loop
(``finish_request``, ``handle_error`` on failure, ``shutdown_request``
always); ``ThreadingMixIn.process_request_thread`` and the prefork worker's
thread pool both run it.  :class:`ThreadList` is the joinable list behind
``ThreadingMixIn._threads``: it keeps only live non-daemon threads, so a server
that runs for months does not accumulate finished ``Thread`` objects.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from typing import Any


def run_request(server: Any, request: Any, client_address: Any) -> None:
    """Handle one request to completion, as a worker thread does.

    Exceptions from the handler go to ``server.handle_error``; the request is
    shut down in every case.  ``SystemExit`` and ``KeyboardInterrupt`` are not
    swallowed, as in the standard library.
    """
    try:
        server.finish_request(request, client_address)
    except Exception:
        server.handle_error(request, client_address)
    finally:
        server.shutdown_request(request)


class ThreadList(list):
    """A joinable list of the live non-daemon threads a server started."""

    def append(self, thread: threading.Thread) -> None:
        """Track ``thread`` unless it is a daemon; drop finished ones first."""
        self.reap()
        if thread.daemon:
            return
        super().append(thread)

    def pop_all(self) -> list[threading.Thread]:
        """Remove and return every tracked thread."""
        self[:], result = [], self[:]
        return result

    def join(self, timeout: float | None = None) -> None:
        """Join every tracked thread (``timeout`` applies to each)."""
        for thread in self.pop_all():
            thread.join(timeout)

    def reap(self) -> None:
        """Forget the threads that have finished."""
        self[:] = [thread for thread in self if thread.is_alive()]


class NoThreads:
    """Stands in for :class:`ThreadList` when threads need not be joined."""

    def append(self, thread: threading.Thread) -> None:
        """Ignore ``thread``."""

    def join(self, timeout: float | None = None) -> None:
        """Nothing to join."""

    def __len__(self) -> int:
        return 0


class ThreadPool:
    """A fixed number of threads running jobs from a queue: a worker's sub-server.

    ``idle`` counts threads with nothing to do, so the worker accepts a new
    connection only when a thread can take it (excess connections stay in the
    kernel backlog, where another worker can pick them up).  The pool records
    when each running job started, so a request that hangs shows up in
    :meth:`oldest_start` even while the worker's loop is healthy.
    ``on_done`` is called in the pool thread after every job (the worker uses
    it to wake its loop).
    """

    def __init__(self, size: int, on_done: Any = None, name: str = "prefork-thread") -> None:
        self.size = max(1, size)
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._outstanding = 0
        self._started: dict[int, float] = {}
        self._completed = 0
        self._on_done = on_done
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{n}", daemon=True)
            for n in range(self.size)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def idle(self) -> int:
        """Threads free to take a job now."""
        return self.size - self._outstanding

    @property
    def outstanding(self) -> int:
        """Jobs submitted and not finished (queued or running)."""
        return self._outstanding

    @property
    def completed(self) -> int:
        """Jobs finished since the pool started."""
        return self._completed

    def oldest_start(self) -> float:
        """``time.monotonic()`` at which the longest-running job started (0.0 if none)."""
        with self._lock:
            return min(self._started.values(), default=0.0)

    def restart_clock(self) -> None:
        """Count the calling pool thread's job as started now (it began another request)."""
        with self._lock:
            self._started[threading.get_ident()] = time.monotonic()

    def submit(self, job: Any) -> None:
        """Queue ``job`` (a callable without arguments) for a pool thread."""
        with self._lock:
            self._outstanding += 1
        self._jobs.put(job)

    def _run(self) -> None:
        ident = threading.get_ident()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                self._started[ident] = time.monotonic()
            try:
                job()
            except BaseException:  # a job handles its own errors; never lose the thread
                traceback.print_exc()
            finally:
                with self._lock:
                    del self._started[ident]
                    self._outstanding -= 1
                    self._completed += 1
                if self._on_done is not None:
                    self._on_done()

    def stop(self, timeout: float | None = None) -> bool:
        """Let queued jobs finish, end the threads; ``False`` if some outlived ``timeout``."""
        for _ in self._threads:
            self._jobs.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
        return not any(thread.is_alive() for thread in self._threads)
