"""Server processes: start fresh, wait until ready, sample CPU and memory, stop by pid.

A server runs in its own process group (so a Ctrl-C at the terminal reaches only the harness)
but in the harness's session, with its output in a log file, never a pipe (a chatty server
cannot block on it).  Not in a session of its own: with the kernel's autogroup scheduling
(``/proc/sys/kernel/sched_autogroup_enabled``) every session is a scheduling group that gets
an equal share of the CPU against the others, so a server in its own session would be held
to the load generator's share on a small machine (on 2 cores prefork's hello fell from 29k
to 19k req/s, gunicorn gthread's from 17k to 13k).  It is stopped by pid only: ``SIGTERM`` to
the process the harness started, ``SIGKILL`` after a deadline, then every descendant seen
before the stop that is still running gets the same treatment, and everything is reaped.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.loadgen import MESSAGE, http_request, http_response_end

LOCALHOST = "127.0.0.1"


class StartError(RuntimeError):
    """The server did not come up; the message says why (with the end of its log)."""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on 127.0.0.1 right now (for servers that cannot bind port 0 themselves)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 8) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])
    return ""


def probe(load: str, port: int, timeout: float = 1.0) -> str | None:
    """``None`` when one request of kind ``load`` is answered correctly, else why not."""
    try:
        if load == "udp":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(timeout)
                sock.sendto(MESSAGE, (LOCALHOST, port))
                data = sock.recv(65536)
                return None if data == MESSAGE else f"bad echo {data[:40]!r}"
        with socket.create_connection((LOCALHOST, port), timeout=timeout) as sock:
            if load == "tcp":
                sock.sendall(MESSAGE)
                data = b""
                while len(data) < len(MESSAGE):
                    chunk = sock.recv(65536)
                    if not chunk:
                        return "connection closed"
                    data += chunk
                return None if data == MESSAGE else f"bad echo {data[:40]!r}"
            sock.sendall(http_request(LOCALHOST, port, close=True))
            buf = b""
            while (end := http_response_end(buf)) is None:
                chunk = sock.recv(65536)
                if not chunk:
                    got = f"after {bytes(buf[:60])!r}" if buf else "without a response"
                    return f"connection closed {got}"
                buf += chunk
            status = end[1]
            return None if status == 200 else f"HTTP status {status}: {buf[:60]!r}"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def tree(pid: int) -> list[psutil.Process]:
    """The process ``pid`` and all its descendants that exist now."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def cpu_seconds(procs: Sequence[psutil.Process]) -> float:
    """CPU time of ``procs``, including their reaped children's."""
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def uss(proc: psutil.Process) -> int | None:
    """Unique set size of one process, in bytes (``None`` if it is gone)."""
    try:
        return int(proc.memory_full_info().uss)
    except psutil.Error:
        return None


@dataclass
class Server:
    """One running server process (and its workers) started by the harness."""

    name: str
    command: list[str]
    log: Path
    load: str
    port: int = 0
    popen: subprocess.Popen[bytes] | None = None
    workers_are_children: bool = False
    seen: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(
        self,
        cwd: Path,
        env: dict[str, str],
        port_pattern: str | None,
        ready_deadline: float = 20.0,
        expected_workers: int = 0,
    ) -> None:
        """Start the command; return once the port answers (else :class:`StartError`)."""
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                **_own_process_group(),
            )
        deadline = time.monotonic() + ready_deadline
        if port_pattern:
            self.port = self._port_from_log(port_pattern, deadline)
        why = "no answer"
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise StartError(
                    f"exited with status {self.popen.returncode}\n{log_tail(self.log)}"
                )
            why = probe(self.load, self.port) or ""
            if not why:
                break
            time.sleep(0.05)
        else:
            raise StartError(f"not ready after {ready_deadline:.0f}s: {why}\n{log_tail(self.log)}")
        # Multi-process servers: give every worker the chance to boot before the load.
        while expected_workers and time.monotonic() < deadline:
            if len(self.workers()) >= expected_workers:
                break
            time.sleep(0.05)
        self.remember()

    def _port_from_log(self, pattern: str, deadline: float) -> int:
        assert self.popen is not None
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                match = regex.search(self.log.read_text(errors="replace"))
                if match:
                    return int(match.group(1))
            if self.popen.poll() is not None:
                raise StartError(
                    f"exited with status {self.popen.returncode}\n{log_tail(self.log)}"
                )
            time.sleep(0.02)
        raise StartError(f"never printed its port\n{log_tail(self.log)}")

    def address_in_use(self) -> bool:
        """Whether the log says the bind failed because the port was taken."""
        with contextlib.suppress(OSError):
            text = self.log.read_text(errors="replace").lower()
            return "address already in use" in text or f"[errno {errno.EADDRINUSE}]" in text
        return False

    def remember(self) -> list[psutil.Process]:
        """Record every process of the server now, so none escapes :meth:`stop`."""
        procs = tree(self.pid)
        for proc in procs:
            self.seen.setdefault(proc.pid, proc)
        return procs

    def workers(self) -> list[psutil.Process]:
        """The processes that serve: the children of a master, else the process itself."""
        procs = self.remember()
        if not procs:
            return []
        if self.workers_are_children:
            return [p for p in procs[1:] if _parent_pid(p) == self.pid]
        return procs[:1]

    def stop(self, deadline: float = 5.0) -> None:
        """``SIGTERM`` the server, ``SIGKILL`` what is left after ``deadline``; reap."""
        if self.popen is None:
            return
        with contextlib.suppress(psutil.Error):
            self.remember()
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(deadline)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.popen.wait()
        left = [p for pid, p in self.seen.items() if pid != self.pid and _running(p)]
        if left:
            _, alive = psutil.wait_procs(left, timeout=min(deadline, 2.0))
            for proc in alive:
                with contextlib.suppress(psutil.Error):
                    proc.kill()  # psutil checks the create time: never a recycled pid
            psutil.wait_procs(alive, timeout=deadline)


def _running(proc: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    return False


def _parent_pid(proc: psutil.Process) -> int | None:
    with contextlib.suppress(psutil.Error):
        return proc.ppid()
    return None


def _own_process_group() -> dict[str, Any]:
    """``Popen`` arguments that start the child in a new process group of this session."""
    if sys.version_info >= (3, 11):
        return {"process_group": 0}
    return {"preexec_fn": os.setpgrp}  # Python 3.10: no process_group argument
