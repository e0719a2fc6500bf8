"""Running ``python -m prefork`` as a subprocess, with the engine tests' output follower."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
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

    def launch(self, **popen: Any) -> CommandProcess:
        """Start the command without waiting for anything."""
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.extra_env)
        env.pop("PREFORK_CONFIG", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefork", *self.args],
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=env,
            **popen,
        )
        for stream, pipe in (("out", self.proc.stdout), ("err", self.proc.stderr)):
            reader = threading.Thread(
                target=self._read, args=(stream, pipe), name=f"{self.name}-{stream}", daemon=True
            )
            reader.start()
            self.readers.append(reader)
        return self


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
