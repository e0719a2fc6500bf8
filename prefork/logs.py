"""Log files: reopening them on ``SIGUSR1`` (for logrotate)."""

from __future__ import annotations

import logging


def reopen_log_files() -> int:
    """Reopen every ``logging.FileHandler``'s file; returns how many were reopened.

    After logrotate renames a file, handlers keep writing to the renamed one
    until they reopen the path.
    """
    handlers = {
        handler
        for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
        if isinstance(logger, logging.Logger)
        for handler in logger.handlers
        if isinstance(handler, logging.FileHandler)
    }
    for handler in handlers:
        handler.acquire()
        try:
            handler.close()
            handler.stream = handler._open()
        finally:
            handler.release()
    return len(handlers)
