"""The request body readers behind ``wsgi.input``, bounded to one request's body.

:class:`_LengthInput` reads a body of ``Content-Length`` bytes, :class:`_ChunkedInput`
decodes the chunked transfer coding (trailer fields are read and dropped), and
``_EMPTY_INPUT`` stands for a request without a body.  Each reader can
``discard()`` what the application left unread, so that the connection can carry
another request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["ChunkedBodyError", "ClientDisconnectedError"]

_READ_BLOCK = 1024 * 1024
"""Request bodies are read at most this many bytes per call."""

_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")


class ClientDisconnectedError(ConnectionError):
    """Raised by ``wsgi.input`` when the client closed before sending its whole body."""


class ChunkedBodyError(ValueError):
    """Raised by ``wsgi.input`` when a chunked request body is malformed."""


class _Input:
    """``wsgi.input`` base: file-like reads bounded to one request body.

    ``gone`` is set when the client went away while the body was read.
    ``on_first_read``, if set, is called (once) before the first read that
    asks for data: it sends ``100 Continue``.
    """

    __slots__ = ("gone", "on_first_read", "rfile")

    def __init__(self, rfile: Any, on_first_read: Callable[[], None] | None = None) -> None:
        self.rfile = rfile
        self.gone = False
        self.on_first_read = on_first_read

    def read(self, size: int | None = -1) -> bytes:
        """Read up to ``size`` bytes of the body (all of the rest when negative)."""
        return b""

    def readline(self, size: int | None = -1) -> bytes:
        """Read one line of the body (at most ``size`` bytes when given)."""
        return b""

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """Read the remaining lines (stopping once ``hint`` bytes were read, if positive)."""
        lines = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    @property
    def pending(self) -> bool:
        """Whether some of the body is still unread."""
        return False

    def discard(self, limit: int) -> bool:
        """Read and drop the rest of the body if it is at most ``limit`` bytes.

        Returns whether the whole body has now been read (the connection can
        carry another request).
        """
        return True

    def _fire(self) -> None:
        callback = self.on_first_read
        if callback is not None:
            self.on_first_read = None
            callback()

    def _read_raw(self, size: int) -> bytes:
        """``size`` bytes (fewer at EOF).  Large sizes are read a block at a time:
        ``BufferedReader.read(n)`` would allocate ``n`` bytes up front, and the
        client chooses ``n``."""
        try:
            if size <= _READ_BLOCK:
                return self.rfile.read(size)
            parts = []
            while size > 0:
                data = self.rfile.read(min(size, _READ_BLOCK))
                if not data:
                    break
                parts.append(data)
                size -= len(data)
            return b"".join(parts)
        except OSError:
            self.gone = True
            raise

    def _readline_raw(self, size: int) -> bytes:
        try:
            return self.rfile.readline(size)
        except OSError:
            self.gone = True
            raise

    def _disconnected(self) -> ClientDisconnectedError:
        self.gone = True
        return ClientDisconnectedError(
            "the client closed the connection before the end of its body"
        )


class _EmptyInput(_Input):
    """The body of a request without one."""

    __slots__ = ()


_EMPTY_INPUT = _EmptyInput(None)


class _LengthInput(_Input):
    """A body of ``Content-Length`` bytes."""

    __slots__ = ("left",)

    def __init__(
        self, rfile: Any, length: int, on_first_read: Callable[[], None] | None = None
    ) -> None:
        super().__init__(rfile, on_first_read)
        self.left = length

    def _allowance(self, size: int | None) -> int:
        """How many bytes a read of ``size`` may take (0 at the end of the body)."""
        if self.on_first_read is not None and size != 0:
            self._fire()
        left = self.left
        if left <= 0:
            return 0
        return left if size is None or size < 0 or size > left else size

    def read(self, size: int | None = -1) -> bytes:
        """Read up to ``size`` bytes of the body (all of the rest when negative)."""
        n = self._allowance(size)
        if n == 0:
            return b""
        data = self._read_raw(n)
        self.left -= len(data)
        if len(data) < n:
            raise self._disconnected()
        return data

    def readline(self, size: int | None = -1) -> bytes:
        """Read one line of the body (at most ``size`` bytes when given)."""
        n = self._allowance(size)
        if n == 0:
            return b""
        line = self._readline_raw(n)
        self.left -= len(line)
        if len(line) < n and not line.endswith(b"\n"):
            raise self._disconnected()
        return line

    @property
    def pending(self) -> bool:
        """Whether some of the body is still unread."""
        return self.left > 0

    def discard(self, limit: int) -> bool:
        """Read and drop the rest of the body if it is at most ``limit`` bytes."""
        left = self.left
        if left > limit:
            return False
        try:
            while left > 0:
                data = self.rfile.read(min(left, 65536))
                if not data:
                    return False
                left -= len(data)
        except OSError:
            return False
        finally:
            self.left = left
        return True


class _ChunkedInput(_Input):
    """A body in chunked transfer coding, decoded; trailer fields are read and dropped."""

    __slots__ = ("broken", "done", "left", "max_line", "max_trailers")

    def __init__(
        self,
        rfile: Any,
        on_first_read: Callable[[], None] | None = None,
        max_line: int = 8190,
        max_trailers: int = 100,
    ) -> None:
        super().__init__(rfile, on_first_read)
        self.left = 0  # bytes left in the current chunk
        self.done = False
        self.broken = False
        self.max_line = max_line
        self.max_trailers = max_trailers

    def read(self, size: int | None = -1) -> bytes:
        """Read up to ``size`` bytes of the body (all of the rest when negative)."""
        if self.on_first_read is not None and size != 0:
            self._fire()
        want = -1 if size is None or size < 0 else size
        parts = []
        while want != 0 and (self.left or self._next_chunk()):
            n = self.left if want < 0 else min(want, self.left)
            parts.append(self._take(n))
            if want > 0:
                want -= n
        return b"".join(parts)

    def readline(self, size: int | None = -1) -> bytes:
        """Read one line of the body (at most ``size`` bytes when given)."""
        if self.on_first_read is not None and size != 0:
            self._fire()
        want = -1 if size is None or size < 0 else size
        parts = []
        while want != 0 and (self.left or self._next_chunk()):
            n = self.left if want < 0 else min(want, self.left)
            line = self._readline_raw(n)
            if len(line) < n and not line.endswith(b"\n"):
                raise self._disconnected()
            self.left -= len(line)
            if want > 0:
                want -= len(line)
            if not self.left:
                self._end_chunk()
            parts.append(line)
            if line.endswith(b"\n"):
                break
        return b"".join(parts)

    @property
    def pending(self) -> bool:
        """Whether some of the body is still unread."""
        return not self.done

    def discard(self, limit: int) -> bool:
        """Read and drop the rest of the body if it is at most ``limit`` bytes."""
        if self.broken:
            return False
        try:
            while self.left or self._next_chunk():
                if self.left > limit:
                    return False
                limit -= self.left
                self._take(self.left)
        except (OSError, ValueError):
            return False
        return True

    def _take(self, n: int) -> bytes:
        data = self._read_raw(n)
        if len(data) < n:
            raise self._disconnected()
        self.left -= n
        if not self.left:
            self._end_chunk()
        return data

    def _end_chunk(self) -> None:
        """Consume the CRLF that ends a chunk's data."""
        crlf = self._read_raw(2)
        if crlf != b"\r\n":
            if len(crlf) < 2:
                raise self._disconnected()
            raise self._invalid("chunk data not followed by CRLF")

    def _next_chunk(self) -> bool:
        """Read the next chunk's size line; ``False`` at the end of the body."""
        if self.done or self.broken:
            if self.broken:
                raise self._invalid("chunked body already failed")
            return False
        line = self._line()
        size_field = line.split(b";", 1)[0].strip(b" \t")
        if not _HEX.fullmatch(size_field):
            raise self._invalid(f"invalid chunk size line {line[:40]!r}")
        size = int(size_field, 16)
        if size:
            self.left = size
            return True
        for _ in range(self.max_trailers + 1):
            if not self._line():
                self.done = True
                return False
        raise self._invalid("too many trailer fields")

    def _line(self) -> bytes:
        """One line of chunked framing, without its line ending."""
        line = self._readline_raw(self.max_line + 3)
        if not line.endswith(b"\n"):
            if len(line) > self.max_line + 2:
                raise self._invalid("chunk size or trailer line too long")
            raise self._disconnected()
        return line.rstrip(b"\r\n")

    def _invalid(self, detail: str) -> ChunkedBodyError:
        self.broken = True
        return ChunkedBodyError(detail)
