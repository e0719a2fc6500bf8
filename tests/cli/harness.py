"""Running ``python -m prefork`` as a subprocess, with the engine tests' output follower."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from engine.harness import DEADLINE, ServerProcess

LISTENING = r"listening on (?P<address>\S+)$"


class CommandProcess(ServerProcess):
    """``prefork ARGS`` in its own session, in ``cwd``, its output followed line by line."""

    def __init__(
        self, *args: Any, cwd: Path, env: dict[str, str] | None = None, name: str = "prefork"
    ) -> None:
        super().__init__(*args, name=name)
        self.cwd = cwd
        self.extra_env = env or {}
        self.addresses: list[str] = []

    def start(self, timeout: float = DEADLINE, binds: int = 1) -> CommandProcess:
        """Start the command and wait until it logged ``binds`` listening addresses."""
        self.launch()
        matches = self.wait_for_line(LISTENING, count=binds, timeout=timeout)
        self.addresses = [match["address"] for match in matches]
        self.address = tcp_address(self.addresses[0])
        return self

    def argv(self) -> list[str]:
        """``python -m prefork ARGS``."""
        return [sys.executable, "-m", "prefork", *self.args]

    def launch(
        self, cwd: Any = None, env: dict[str, str | None] | None = None, **popen: Any
    ) -> None:
        """Start the command in ``self.cwd`` without waiting for anything."""
        variables: dict[str, str | None] = {"PREFORK_CONFIG": None, **self.extra_env}
        super().launch(cwd=cwd or self.cwd, env={**variables, **(env or {})}, **popen)


def tcp_address(text: str) -> Any:
    """``tcp://127.0.0.1:8000`` -> ``("127.0.0.1", 8000)``; other kinds unchanged."""
    if text.startswith(("tcp://", "udp://")):
        host, _, port = text[len("tcp://") :].rpartition(":")
        return host.strip("[]"), int(port)
    return text


def run_command(
    *args: Any, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``prefork ARGS`` to completion (for commands that exit on their own)."""
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("PREFORK_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "prefork", *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        start_new_session=True,
    )


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a Unix stream socket."""

    def __init__(self, path: Path | str, timeout: float = DEADLINE) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
