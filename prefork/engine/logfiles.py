"""The log files of the master and the workers: reopened on ``SIGUSR1``, and where dumps go.

The command configures logging (:mod:`prefork.ops.logs`); the engine only
reopens whatever ``logging.FileHandler`` it finds, so that logrotate works
for a server class configured by hand too.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import IO, Any

__all__ = ["capture_std_streams", "dump_stream", "reopen_log_files"]

#: The file handler whose file stdout and stderr were redirected into (``--capture-output``).
_capturing: logging.FileHandler | None = None


def reopen_log_files() -> int:
    """Reopen every ``logging.FileHandler``'s file; returns how many were reopened.

    After logrotate renames a file, handlers keep writing to the renamed one
    until they reopen the path.  A path that cannot be opened any more (removed
    directory, lost permission) is reported and its handler keeps the old file:
    losing the logs must not stop the server.
    """
    handlers = {
        handler
        for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
        if isinstance(logger, logging.Logger)
        for handler in logger.handlers
        if isinstance(handler, logging.FileHandler)
    }
    reopened = 0
    failures: list[tuple[str, OSError]] = []
    for handler in handlers:
        handler.acquire()
        try:
            if handler.stream is None:
                continue  # delay=True and nothing written yet: it opens the path itself
            try:
                stream = handler._open()
            except OSError as error:
                failures.append((handler.baseFilename, error))
                continue
            old, handler.stream = handler.stream, stream
            if handler is _capturing:
                _redirect_std_streams(stream)
            old.close()
            reopened += 1
        finally:
            handler.release()
    for path, problem in failures:
        logging.getLogger("prefork.logs").error(
            "cannot reopen log file %s (%s); still writing to the file it had open",
            path,
            problem.strerror or problem,
        )
    return reopened


def capture_std_streams(handler: logging.FileHandler) -> None:
    """Send stdout and stderr into ``handler``'s file, now and after every reopen."""
    global _capturing
    _capturing = handler
    if handler.stream is not None:
        _redirect_std_streams(handler.stream)


def _redirect_std_streams(stream: IO[str]) -> None:
    """Point file descriptors 1 and 2 at ``stream``'s file (``print()``, tracebacks, dumps)."""
    for std in (sys.stdout, sys.stderr):
        if std is not None:
            std.flush()
    for fd in (1, 2):
        os.dup2(stream.fileno(), fd)


def dump_stream() -> Any:
    """Where stack dumps go: the root logger's log file if it has one, else stderr.

    ``faulthandler`` writes to a file descriptor, not through a handler, so
    the dumps of a stuck worker reach the log file only this way.
    """
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and handler.stream is not None:
            return handler.stream
    return sys.stderr
