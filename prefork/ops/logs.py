"""Logging set-up for the command: a ``dictConfig`` file, or one handler to stderr or a file.

Reopening the files on ``SIGUSR1`` is the engine's (:mod:`prefork.engine.logfiles`),
since the master and the workers do it whoever configured the logging.
"""

from __future__ import annotations

import logging
import sys
from typing import IO

from prefork.engine.logfiles import capture_std_streams
from prefork.errors import ConfigError

LOG_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"


def configure_logging(
    level: str,
    logfile: str | None,
    logconfig: str | None,
    *,
    capture_output: bool = False,
    access_logfile: str | None = None,
) -> None:
    """Set up the root logger for the command: a dictConfig file, or one handler.

    ``logfile`` of ``None`` or ``"-"`` logs to stderr.  ``capture_output``
    redirects the process's stdout and stderr (file descriptors 1 and 2, so
    children inherit it) into the log file.  ``access_logfile`` (``"-"`` for
    stdout) gives the ``prefork.access`` logger a handler of its own, which turns
    the WSGI access log on.  Errors are :class:`~prefork.errors.ConfigError`
    with one line.
    """
    import logging.config

    _configure_access_log(access_logfile)
    if logconfig:
        try:
            logging.config.dictConfig(_read_dict_config(logconfig))
        except (ValueError, TypeError, AttributeError, ImportError) as exc:
            raise ConfigError(f"log config {logconfig}: {exc}") from None
        return
    root = logging.getLogger()
    handler = _open_handler(logfile, sys.stderr, "log file")
    _replace_handlers(root, handler, LOG_FORMAT)
    root.setLevel(level.upper())
    if capture_output and isinstance(handler, logging.FileHandler) and handler.stream:
        capture_std_streams(handler)


def _configure_access_log(path: str | None) -> None:
    """Give ``prefork.access`` its own handler for ``path``, or none (the log is off)."""
    from prefork.http.access_log import LOGGER_NAME

    access = logging.getLogger(LOGGER_NAME)
    handler = _open_handler(path, sys.stdout, "access log") if path else None
    _replace_handlers(access, handler, "%(message)s")
    if handler is not None:
        access.setLevel(logging.INFO)
        access.propagate = False


def _open_handler(path: str | None, stream: IO[str], what: str) -> logging.Handler:
    """A handler writing to ``path``, or to ``stream`` for ``None`` and ``"-"``."""
    if path is None or path == "-":
        return logging.StreamHandler(stream)
    try:
        return logging.FileHandler(path)
    except OSError as exc:
        raise ConfigError(f"cannot open {what} {path}: {exc.strerror}") from None


def _replace_handlers(logger: logging.Logger, handler: logging.Handler | None, fmt: str) -> None:
    """Close ``logger``'s handlers and give it ``handler`` instead (once it could be opened)."""
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    if handler is not None:
        handler.setFormatter(logging.Formatter(fmt))
        logger.addHandler(handler)


def _read_dict_config(path: str) -> dict[str, object]:
    import json

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
