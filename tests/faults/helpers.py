"""Helpers of the fault suite: figures, timed log lines, generic client loads, processes.

Built on the end-to-end harness (``tests/engine/harness.py``): nothing here sleeps to
synchronise; waits are on log lines or poll a predicate until a deadline.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil
from engine.harness import APP, DEADLINE, READY, LoadGenerator, ServerProcess, wait_until

# -- figures ------------------------------------------------------------------------------------


@dataclass
class Figures:
    """What one test measured, for the report (``docs/reliability.md``).

    ``sent`` counts every request attempt (a keep-alive retry is a second attempt);
    ``failed`` the requests that failed and count as failures; ``recovery`` is the
    time-to-recover text of the table, ``recovery_s`` the figure it is built on.
    """

    fault: str = ""
    load: str = ""
    sent: int = 0
    failed: int = 0
    recovery: str = ""
    recovery_s: float | None = None
    bound: str = ""
    notes: list[str] = field(default_factory=list)

    def count(self, sent: int, failed: int) -> None:
        self.sent += sent
        self.failed += failed

    def count_load(self, load: LoadGenerator) -> None:
        """Add a finished :class:`LoadGenerator`'s requests (retries are attempts too)."""
        retried = len(load.retried)
        self.count(load.successes + len(load.failures) + retried, len(load.failures))
        if retried:
            self.note(f"{retried} keep-alive request(s) retried once on a closed idle connection")

    def note(self, text: str) -> None:
        self.notes.append(text)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def seconds(value: float) -> str:
    """``0.0421`` -> ``"0.042 s"``: the precision the figures deserve."""
    if value < 0.1:
        return f"{value:.3f} s"
    if value < 10:
        return f"{value:.2f} s"
    return f"{value:.1f} s"


def spread(values: Iterable[float]) -> str:
    """``"median 0.04 s, max 0.09 s (n=5)"``."""
    values = list(values)
    if len(values) == 1:
        return seconds(values[0])
    median, largest = statistics.median(values), max(values)
    return f"median {seconds(median)}, max {seconds(largest)} (n={len(values)})"


# -- log lines ----------------------------------------------------------------------------------


def worker_line(pattern: str, pid: int) -> str:
    """``pattern`` (READY, EXITED, RETIRING...) for the worker with ``pid`` only."""
    return pattern.replace(r"pid=(?P<pid>\d+)", f"pid=(?P<pid>{pid})")


def generation_line(pattern: str, generation: int) -> str:
    """``pattern`` for the workers of ``generation`` only."""
    return pattern.replace(r"(?P<gen>\d+)", f"(?P<gen>{generation})")


def timed_lines(
    server: ServerProcess, regex: str, since: int = 0, stream: str | None = "err"
) -> list[tuple[re.Match[str], float]]:
    """Every match of ``regex`` after line ``since``, with the time the harness read it."""
    pattern = re.compile(regex)
    with server.cond:
        lines = server.lines[since:]
    return [
        (match, line.at)
        for line in lines
        if stream is None or line.stream == stream
        if (match := pattern.search(line.text))
    ]


def wait_timed(
    server: ServerProcess,
    regex: str,
    count: int = 1,
    since: int = 0,
    timeout: float = DEADLINE,
) -> list[tuple[re.Match[str], float]]:
    """Wait for ``count`` lines matching ``regex``; return them with their read times."""
    server.wait_for_line(regex, count=count, since=since, timeout=timeout)
    return timed_lines(server, regex, since)[:count]


def occurrences(server: ServerProcess, regex: str, stream: str = "err") -> int:
    """How many times ``regex`` occurs in the output: several processes write to one pipe,
    so two messages can share a line (a ``print`` is several writes)."""
    pattern = re.compile(regex)
    with server.cond:
        lines = [line.text for line in server.lines if line.stream == stream]
    return sum(len(pattern.findall(text)) for text in lines)


_CLOCK = re.compile(r"(\d\d):(\d\d):(\d\d)[.,](\d{3})")


def logged_at(text: str) -> float:
    """The time of day a log line was written, in seconds (``HH:MM:SS.mmm`` or ``,mmm``)."""
    match = _CLOCK.search(text)
    assert match, f"no timestamp in {text!r}"
    hours, minutes, secs, millis = map(int, match.groups())
    return hours * 3600 + minutes * 60 + secs + millis / 1000


def time_of_day() -> float:
    """Now, as a time of day in seconds (local time, as the servers' log lines have it)."""
    now = time.time()
    local = time.localtime(now)
    return local.tm_hour * 3600 + local.tm_min * 60 + local.tm_sec + now % 1


def logged_since(start: float, text: str) -> float:
    """Seconds from ``start`` (a :func:`time_of_day`) to when the log line ``text`` was
    written, by its own timestamp: what the server did, not when the harness read it.
    The timestamps have milliseconds, so this is exact to about a millisecond."""
    return (logged_at(text) - start + 43200) % 86400 - 43200


def gaps(times: list[float]) -> list[float]:
    """The intervals between successive times of day (across midnight too)."""
    return [(later - earlier) % 86400 for earlier, later in itertools.pairwise(times)]


# -- processes ----------------------------------------------------------------------------------

#: Runs ``app.py`` with a lower RLIMIT_NOFILE: ``python -c LIMITED LIMIT app.py ARGS``.
_LIMITED = (
    "import resource, runpy, sys\n"
    "limit = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))\n"
    "del sys.argv[:2]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


class FaultServer(ServerProcess):
    """The engine test app (``tests/engine/app.py``), optionally with a low fd limit."""

    def __init__(self, *args: Any, name: str = "server", nofile: int | None = None) -> None:
        super().__init__(*args, name=name)
        self.nofile = nofile

    def start(self, timeout: float = DEADLINE) -> FaultServer:
        if self.nofile is None:
            super().start(timeout)
            return self
        # As ServerProcess.start, with the limit set in the child before the app runs.
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LIMITED, str(self.nofile), str(APP), *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        for stream, pipe in (("out", self.proc.stdout), ("err", self.proc.stderr)):
            reader = threading.Thread(
                target=self._read, args=(stream, pipe), name=f"{self.name}-{stream}", daemon=True
            )
            reader.start()
            self.readers.append(reader)
        match = self.wait_for_line(r"^LISTENING (\S+) (\d+)$", stream="out", timeout=timeout)[0]
        self.address = (match[1], int(match[2]))
        return self


def zombie_children(pid: int) -> list[int]:
    """Children of ``pid`` that have exited but were not reaped."""
    found = []
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.status() == psutil.STATUS_ZOMBIE:
                    found.append(child.pid)
    return found


def num_fds(pid: int) -> int:
    return psutil.Process(pid).num_fds()


def fd_table(pid: int) -> dict[int, str]:
    """The open fds of ``pid`` and what they point at (for failure messages)."""
    table = {}
    with contextlib.suppress(OSError):
        for name in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                table[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
    return table


def wait_for_fd_count(pid: int, expected: int, timeout: float = 10.0) -> None:
    """Wait until ``pid`` has ``expected`` open fds (an fd leak fails with its table)."""
    wait_until(
        lambda: num_fds(pid) == expected,
        timeout,
        f"the master's fd count back at {expected}",
        lambda: f"now {num_fds(pid)}: {fd_table(pid)}",
    )


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time ``pid`` has used so far."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


# -- clients ------------------------------------------------------------------------------------


def read_until_closed(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """What the server sends until it closes (or resets) the connection, up to ``limit``."""
    reply = b""
    with contextlib.suppress(ConnectionResetError):
        while len(reply) < limit and (chunk := sock.recv(65536)):
            reply += chunk
    return reply


@dataclass
class CallFailure:
    client: int
    at: float
    error: str

    def __str__(self) -> str:
        return f"client {self.client} at {self.at:.3f}: {self.error}"


class CallLoad:
    """Client threads each calling ``call()`` in a loop until stopped, ``max_duration``
    seconds or ``max_calls`` calls: a call that returns is a success, one that raises
    a failure (recorded with its error).  For protocols :class:`LoadGenerator` does not
    speak (echo lines, datagrams, HTTP over a Unix socket)."""

    def __init__(
        self,
        call: Callable[[], object],
        *,
        clients: int = 2,
        max_duration: float = 60.0,
        max_calls: int = 100_000,
        name: str = "call-load",
    ) -> None:
        self.call = call
        self.max_duration = max_duration
        self.max_calls = max_calls
        self.cond = threading.Condition()
        self.stopping = threading.Event()
        self.successes = 0
        self.failures: list[CallFailure] = []
        self.started_at = 0.0
        self.threads = [
            threading.Thread(target=self._client, args=(n,), name=f"{name}-{n}", daemon=True)
            for n in range(clients)
        ]

    def start(self) -> CallLoad:
        self.started_at = time.monotonic()
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> CallLoad:
        self.stopping.set()
        for thread in self.threads:
            if thread.ident is not None:
                thread.join(DEADLINE)
        alive = [thread.name for thread in self.threads if thread.is_alive()]
        assert not alive, f"clients did not stop: {alive}"
        return self

    def __enter__(self) -> CallLoad:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def sent(self) -> int:
        with self.cond:
            return self.successes + len(self.failures)

    def _running(self) -> bool:
        if self.stopping.is_set():
            return False
        if time.monotonic() - self.started_at > self.max_duration:
            return False
        return self.sent < self.max_calls

    def _client(self, number: int) -> None:
        while self._running():
            try:
                self.call()
            except Exception as exc:
                failure = CallFailure(
                    number, time.monotonic() - self.started_at, f"{type(exc).__name__}: {exc}"
                )
                with self.cond:
                    self.failures.append(failure)
                    self.cond.notify_all()
            else:
                with self.cond:
                    self.successes += 1
                    self.cond.notify_all()

    def wait_for_successes(self, count: int, timeout: float = DEADLINE) -> None:
        """Wait until ``count`` more calls than now have succeeded."""
        deadline = time.monotonic() + timeout
        with self.cond:
            target = self.successes + count
            while self.successes < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not any(t.is_alive() for t in self.threads):
                    raise AssertionError(
                        f"{self.successes} successes, wanted {target} within {timeout:g}s;"
                        f" {self.report()}"
                    )
                self.cond.wait(min(remaining, 0.5))

    def report(self) -> str:
        with self.cond:
            lines = [f"{self.successes} successes, {len(self.failures)} failures"]
            lines += [f"  failure: {failure}" for failure in self.failures[:20]]
        return "\n".join(lines)


# -- requests queued behind busy threads -------------------------------------------------------


def fill_then_queue(
    server: ServerProcess, busy: int, waiting: int
) -> list[http.client.HTTPConnection]:
    """Occupy ``busy`` threads with 1 s requests, then send ``waiting`` requests behind them.

    With every thread busy no worker accepts, so the waiting ones sit in the kernel's
    listen backlog (their ``connect()`` has completed).  Returns every connection, busy
    ones first; the caller closes them.
    """
    conns: list[http.client.HTTPConnection] = []
    try:
        for _ in range(busy):
            conn = http.client.HTTPConnection(*server.address, timeout=30)
            conns.append(conn)
            conn.request("GET", "/sleep?s=1")
        server.wait_for_line(r"request /sleep\?s=1: sleeping", count=busy)
        for _ in range(waiting):
            conn = http.client.HTTPConnection(*server.address, timeout=30)
            conns.append(conn)
            conn.request("GET", "/pid")
    except BaseException:
        for conn in conns:
            conn.close()
        raise
    return conns


def collect_answers(
    conns: list[http.client.HTTPConnection],
) -> tuple[list[tuple[int, str]], list[str]]:
    """Each connection's response ``(status, body)``, and the errors of those that got none."""
    answers: list[tuple[int, str]] = []
    errors: list[str] = []
    for conn in conns:
        try:
            response = conn.getresponse()
            answers.append((response.status, response.read().decode()))
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return answers, errors


def http_server_under_load(
    start_server: Any, start_load: Any, workers: int, threads: int
) -> tuple[ServerProcess, set[int], LoadGenerator]:
    """An HTTP engine server of ``workers`` x ``threads`` that 8 clients (4 keep-alive, 4
    opening a connection per request) have heard from every worker: the server, its
    worker pids, and the running load."""
    server = start_server("--kind", "http", "--workers", workers, "--threads", threads)
    server.wait_for_line(READY, count=workers)
    pids = server.wait_for_workers(workers)
    load = start_load(server.address, keepalive_clients=4, fresh_clients=4)
    load.wait_for_answer_from(pids)
    load.wait_for_successes(200)
    return server, pids, load
