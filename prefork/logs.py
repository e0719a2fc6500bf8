"""Logging set-up for the command, and reopening log files on ``SIGUSR1`` (logrotate)."""

from __future__ import annotations

import logging


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
            old.close()
            reopened += 1
        finally:
            handler.release()
    for path, problem in failures:
        logging.getLogger(__name__).error(
            "cannot reopen log file %s (%s); still writing to the file it had open",
            path,
            problem.strerror or problem,
        )
    return reopened


LOG_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"


def configure_logging(level: str, logfile: str | None, logconfig: str | None) -> None:
    """Set up the root logger for the command: a dictConfig file, or one handler.

    ``logfile`` of ``None`` or ``"-"`` logs to stderr.  Errors are
    :class:`~prefork.errors.ConfigError` with one line.
    """
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


def _read_dict_config(path: str) -> dict[str, object]:
    import json

    from prefork.config import tomllib
    from prefork.errors import ConfigError

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
