"""Logging set-up for the command, and reopening log files on ``SIGUSR1`` (logrotate)."""

from __future__ import annotations

import logging
import os
import sys
from typing import IO, Any

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


LOG_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"


def configure_logging(
    level: str, logfile: str | None, logconfig: str | None, *, capture_output: bool = False
) -> None:
    """Set up the root logger for the command: a dictConfig file, or one handler.

    ``logfile`` of ``None`` or ``"-"`` logs to stderr.  ``capture_output``
    redirects the process's stdout and stderr (file descriptors 1 and 2, so
    children inherit it) into the log file.  Errors are
    :class:`~prefork.errors.ConfigError` with one line.
    """
    global _capturing
    import logging.config

    from prefork.errors import ConfigError

    if logconfig:
        try:
            logging.config.dictConfig(_read_dict_config(logconfig))
        except (ValueError, TypeError, AttributeError, ImportError) as exc:
            raise ConfigError(f"log config {logconfig}: {exc}") from None
        return
    handler: logging.Handler
    if logfile is None or logfile == "-":
        handler = logging.StreamHandler()
    else:
        try:
            handler = logging.FileHandler(logfile)
        except OSError as exc:
            raise ConfigError(f"cannot open log file {logfile}: {exc.strerror}") from None
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):  # only once the new one could be opened
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    if capture_output and isinstance(handler, logging.FileHandler) and handler.stream:
        _capturing = handler
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


def _read_dict_config(path: str) -> dict[str, object]:
    import json

    from prefork.errors import ConfigError
    from prefork.ops.config import tomllib

    try:
        with open(path, "rb") as file:
            raw = file.read()
    except OSError as exc:
        raise ConfigError(f"cannot read log config {path}: {exc.strerror}") from None
    try:
        config = json.loads(raw) if path.endswith(".json") else tomllib.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"log config {path}: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"log config {path}: expected a dictConfig table")
    config.setdefault("version", 1)
    return config
