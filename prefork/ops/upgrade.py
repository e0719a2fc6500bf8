"""``USR2``: a new master, re-executed from the same command line, inherits the sockets.

The old master forks a child that ``exec``\\ s the command again with the
listening sockets' descriptors named in :data:`~prefork.engine.listeners.INHERIT_ENV`,
renames its pidfile to ``PIDFILE.oldbin`` and keeps serving; the operator sends
it ``TERM`` once the new master serves.  If the new master exits first, the
pidfile gets its name back and a later ``USR2`` may try again.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from prefork.core.children import ExitedChild, fork_child
from prefork.engine import listeners
from prefork.ops.pidfile import Pidfile

logger = logging.getLogger("prefork.command")  # public: docs/operations.md, Logging

#: Set in a re-executed master: the pid of the master it replaces.
UPGRADED_FROM_ENV = "PREFORK_UPGRADED_FROM"

__all__ = ["UPGRADED_FROM_ENV", "Upgrade", "is_upgraded_master"]


def is_upgraded_master() -> bool:
    """Whether this master was started by a ``USR2`` and has not taken over yet."""
    return bool(os.environ.get(UPGRADED_FROM_ENV))


class Upgrade:
    """The upgrade in progress, if any: at most one new master at a time."""

    def __init__(self) -> None:
        #: The new master's pid, while it runs beside this one.
        self.new_master_pid: int | None = None
        self._pidfile: Pidfile | None = None  # renamed to .oldbin while it runs

    def start(
        self,
        master: Any,
        binds: Sequence[tuple[str, Any]],
        *,
        launch_dir: str,
        pidfile: Pidfile | None,
        pre_exec: Callable[[], None],
    ) -> None:
        """Fork and ``exec`` a new master that inherits the sockets of ``binds``.

        ``binds`` pairs each bind text of the command line with its server;
        ``pre_exec`` runs in the child just before the ``exec`` (the hook).
        """
        if self.new_master_pid is not None:
            logger.warning("USR2 ignored: an upgrade (pid %d) is in progress", self.new_master_pid)
            return
        if is_upgraded_master():
            logger.warning("USR2 ignored: this master has not finished replacing the old one")
            return
        by_bind = {text: server.socket.fileno() for text, server in binds}
        env = dict(os.environ)
        env[listeners.INHERIT_ENV] = json.dumps(by_bind)
        env[UPGRADED_FROM_ENV] = str(os.getpid())
        argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))

        def exec_new_master() -> int:
            for fd in by_bind.values():
                os.set_inheritable(fd, True)
            os.chdir(launch_dir)  # the command line's relative paths are from there
            pre_exec()
            os.execve(sys.executable, [sys.executable, *argv[1:]], env)
            return 1  # not reached

        self._pidfile = pidfile
        if pidfile is not None:
            pidfile.rename(pidfile.path + ".oldbin")
        pid = fork_child(exec_new_master)
        self.new_master_pid = pid
        master.adopt_child(pid, self._ended)
        logger.info(
            "upgrade: started a new master, pid %d; send TERM to this one (%d) once it serves",
            pid,
            os.getpid(),
        )

    def _ended(self, exited: ExitedChild) -> None:
        logger.error("upgrade: the new master (pid %d) exited: %s", exited.pid, exited.describe())
        self.new_master_pid = None
        pidfile = self._pidfile
        if pidfile is not None and pidfile.path.endswith(".oldbin"):
            pidfile.rename(pidfile.path.removesuffix(".oldbin"))
