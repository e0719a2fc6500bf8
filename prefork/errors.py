"""Errors that are the user's to fix, as opposed to bugs or runtime failures."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(Exception):
    """A bad setting, bind address, user, group, pidfile or inherited socket.

    Its message is one line that names the problem (``unknown user 'www'``,
    ``pidfile /run/app.pid is held by a running master (pid 812)``); the
    ``prefork`` command prints it as ``prefork: <message>`` and exits with
    status 2.  Raise it only for mistakes the user can correct by changing
    how prefork is configured or started.
    """

    def __init__(self, message: str) -> None:
        # One line, whatever the caller interpolated (an OS reason, a file's content).
        lines = (line.strip() for line in str(message).splitlines())
        super().__init__(" ".join(line for line in lines if line))
