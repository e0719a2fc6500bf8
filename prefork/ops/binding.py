"""The command's listening sockets: bound from ``--bind``, inherited, or passed by systemd.

Which sockets to open is the command's decision (a ``--bind`` given anywhere
wins over systemd's sockets); how to open each one is the engine's
(:mod:`prefork.engine.listeners`).  The Unix socket files bound here are
remembered with their inode, so that a clean stop removes them and only them.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefork.engine import listeners
from prefork.engine.listeners import Bind
from prefork.ops import config, systemd

__all__ = ["Binding"]


class Binding:
    """Opens the listeners of one command and cleans up their socket files at exit."""

    def __init__(
        self, settings: Mapping[str, Any], command_line: Mapping[str, Any], config_path: str | None
    ) -> None:
        self.settings = settings
        self.command_line = command_line
        self.config_path = config_path
        #: Unix socket file -> inode, for the files this master's lineage bound.
        self.socket_files: dict[str, int] = {}

    def open(self) -> list[tuple[Bind, socket.socket]]:
        """Bind every ``--bind`` (or adopt inherited and systemd sockets)."""
        inherited = listeners.inherited_fds(os.environ)
        systemd_fds = systemd.listen_fds()
        texts = list(self.settings["bind"])
        if systemd_fds and not self._bind_given():
            texts = [f"fd://{fd}" for fd, _ in systemd_fds]
        opened: list[tuple[Bind, socket.socket]] = []
        try:
            for text in texts:
                bind = listeners.parse_bind(text)
                sock = listeners.open_listener(
                    bind,
                    backlog=self.settings["backlog"],
                    reuse_port=self.settings["reuse_port"],
                    unix_mode=self.settings["unix_socket_mode"],
                    inherited=inherited,
                    systemd_fds=systemd_fds,
                )
                opened.append((bind, sock))
                self._own_socket_file(listeners.owned_unix_path(bind, systemd_fds))
        except BaseException:
            for _, sock in opened:
                sock.close()
            raise
        os.environ.pop(listeners.INHERIT_ENV, None)
        return opened

    def remove_socket_files(self) -> None:
        """Remove the Unix socket files bound here that still are the ones bound."""
        for path, inode in self.socket_files.items():
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == inode:
                    os.unlink(path)

    def _own_socket_file(self, path: str | None) -> None:
        """Remember a socket file to remove at a clean stop (with its inode, to spot a
        file that another process bound at the same path in the meantime)."""
        if path is not None:
            with contextlib.suppress(OSError):
                self.socket_files[os.path.abspath(path)] = os.stat(path).st_ino

    def _bind_given(self) -> bool:
        if "bind" in self.command_line or "PREFORK_BIND" in os.environ:
            return True
        path = config.find_config_file(
            self.config_path or os.environ.get(config.CONFIG_ENV), Path.cwd()
        )
        return path is not None and "bind" in config.read_config_file(path)
