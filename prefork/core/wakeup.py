"""A self-pipe that wakes a selector from another thread or a signal handler.

The standard library's ``serve_forever()`` polls a flag every ``poll_interval``
seconds to notice ``shutdown()`` (its source carries a comment wishing for a
wakeup fd).  prefork's loops select on the read end of this pipe instead, so a
``shutdown()`` from another thread, or a signal recorded with
:func:`signal.set_wakeup_fd`, takes effect at once.
"""

from __future__ import annotations

import contextlib
import os


class Waker:
    """A non-blocking pipe: ``wake()`` makes :meth:`fileno` readable.

    ``wake()`` is safe from any thread; :meth:`write_fileno` can be handed to
    :func:`signal.set_wakeup_fd`.  Writes never block: when the pipe is full a
    wakeup is already pending, which is all a waker needs to say.
    """

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        """The read end, for a selector."""
        return self._read_fd

    def write_fileno(self) -> int:
        """The write end, for :func:`signal.set_wakeup_fd`."""
        return self._write_fd

    def wake(self) -> None:
        """Make the read end readable (idempotent, never blocks)."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write_fd, b"\0")

    def drain(self) -> bytes:
        """Consume pending wakeups; returns the bytes read (signal numbers for a wakeup fd)."""
        chunks = []
        while True:
            try:
                chunk = os.read(self._read_fd, 4096)
            except (BlockingIOError, InterruptedError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        """Close both ends (idempotent)."""
        for fd in (self._read_fd, self._write_fd):
            if fd >= 0:
                os.close(fd)
        self._read_fd = self._write_fd = -1

    def __enter__(self) -> Waker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
