"""The end-to-end harness: the app as a subprocess, its output, clients and samplers.

Nothing here sleeps to synchronise: waits are on a condition (a log line, a count
of responses) or poll a predicate until a deadline, and fail with the server's
recent output when the deadline passes.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from prefork.engine.scoreboard import published_path

APP = Path(__file__).with_name("app.py")
LOCALHOST = "127.0.0.1"
DEADLINE = 20.0
"""Default deadline for a condition in these tests (generous: CI machines are slow)."""

READY = r"master: <worker (?P<index>\d+) pid=(?P<pid>\d+) generation=(?P<gen>\d+)> ready"
EXITED = (
    r"master: <worker (?P<index>\d+) pid=(?P<pid>\d+) generation=(?P<gen>\d+)> exited: (?P<how>.*)"
)
SPAWNED = r"master: spawned <worker (?P<index>\d+) pid=(?P<pid>\d+) generation=(?P<gen>\d+)>"
RETIRING = (
    r"master: retiring <worker (?P<index>\d+) pid=(?P<pid>\d+) generation=(?P<gen>\d+)>:"
    r" (?P<reason>.*)"
)
STACK_DUMP = r"^(Current thread|Thread) 0x[0-9a-f]+"


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = DEADLINE,
    message: str = "condition",
    describe: Callable[[], str] | None = None,
    interval: float = 0.01,
) -> Any:
    """Poll ``predicate`` until it returns something true (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            details = f"\n{describe()}" if describe else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {message}{details}")
        time.sleep(interval)


def pid_gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (it does not exist, or it is a zombie)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def live_children(pid: int) -> list[psutil.Process]:
    """The children of ``pid`` that are running (not zombies)."""
    found = []
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.status() != psutil.STATUS_ZOMBIE:
                    found.append(child)
    return found


def process_group_members(pgid: int) -> list[int]:
    """Running processes (not zombies) in process group ``pgid``."""
    members = []
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(OSError, psutil.Error):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                members.append(proc.pid)
    return members


@dataclass
class Line:
    """One line of the server's output."""

    stream: str  # "out" or "err"
    text: str
    at: float  # time.monotonic() when the harness read it


class ServerProcess:
    """The test app in its own session, its output collected line by line.

    Use as a context manager (or call :meth:`close`): on the way out the whole
    process group is SIGKILLed if anything in it still runs, the master is
    waited for and the reader threads are joined, whatever happened in the test.
    """

    def __init__(self, *args: str, name: str = "server") -> None:
        self.args = [str(arg) for arg in args]
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[Line] = []
        self.cond = threading.Condition()
        self.readers: list[threading.Thread] = []
        self.address: Any = None
        self.closed = False

    # -- life cycle -----------------------------------------------------------------------

    def start(self, timeout: float = DEADLINE) -> ServerProcess:
        """Start the app and wait until it printed the address it is bound to."""
        self.launch()
        match = self.wait_for_line(r"^LISTENING (\S+)(?: (\d+))?$", stream="out", timeout=timeout)[
            0
        ]
        host, port = match.groups()
        self.address = (host, int(port)) if port else host
        return self

    def argv(self) -> list[str]:
        """The command line that starts the server."""
        return [sys.executable, str(APP), *self.args]

    def launch(
        self, cwd: Any = None, env: dict[str, str | None] | None = None, **popen: Any
    ) -> None:
        """Start the process in its own session and follow its output; do not wait.

        ``env`` adds variables to this process's environment (``None`` removes one).
        """
        full_env = dict(os.environ, PYTHONUNBUFFERED="1")
        for name, value in (env or {}).items():
            if value is None:
                full_env.pop(name, None)
            else:
                full_env[name] = value
        self.proc = subprocess.Popen(
            self.argv(),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=full_env,
            **popen,
        )
        for stream, pipe in (("out", self.proc.stdout), ("err", self.proc.stderr)):
            reader = threading.Thread(
                target=self._read, args=(stream, pipe), name=f"{self.name}-{stream}", daemon=True
            )
            reader.start()
            self.readers.append(reader)

    def _read(self, stream: str, pipe: Any) -> None:
        for raw in iter(pipe.readline, b""):
            line = Line(stream, raw.decode("utf-8", "replace").rstrip("\n"), time.monotonic())
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def close(self) -> None:
        """Kill whatever is left of the process group, reap the master, join the readers."""
        if self.closed or self.proc is None:
            return
        self.closed = True
        try:
            if self.proc.poll() is None:
                # A fast stop first, so that the master cleans up after itself (its
                # published scoreboard in /dev/shm above all).
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=3)
            # The group, not just the master: workers must not outlive the test
            # even when the master is already gone.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=DEADLINE)
            if self.proc.returncode == -signal.SIGKILL:
                # Killed (by the test or just now): remove what it could not.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(published_path(self.proc.pid))
            for reader in self.readers:
                reader.join(timeout=DEADLINE)
            stuck = [reader.name for reader in self.readers if reader.is_alive()]
            assert not stuck, f"output readers did not finish: {stuck}"
        finally:
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()
            # Shown by pytest when the test fails.
            print(f"----- {self.name} {self.args} output -----")
            print(self.tail(len(self.lines)))

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- output -----------------------------------------------------------------------------

    def mark(self) -> int:
        """The number of lines read so far, to wait only for lines after this point."""
        with self.cond:
            return len(self.lines)

    def tail(self, count: int = 60) -> str:
        with self.cond:
            lines = self.lines[-count:] if count else []
        return "\n".join(f"[{line.stream}] {line.text}" for line in lines)

    def find(self, regex: str, since: int = 0, stream: str | None = "err") -> list[re.Match[str]]:
        """Every match of ``regex`` in the lines read so far (after ``since``)."""
        pattern = re.compile(regex)
        with self.cond:
            lines = self.lines[since:]
        return [
            match
            for line in lines
            if stream is None or line.stream == stream
            if (match := pattern.search(line.text))
        ]

    def wait_for_line(
        self,
        regex: str,
        count: int = 1,
        timeout: float = DEADLINE,
        since: int = 0,
        stream: str | None = "err",
    ) -> list[re.Match[str]]:
        """Wait until ``count`` lines (after ``since``) match ``regex``; return the matches."""
        pattern = re.compile(regex)
        deadline = time.monotonic() + timeout
        matches: list[re.Match[str]] = []
        scanned = since
        with self.cond:
            while True:
                for line in self.lines[scanned:]:
                    if (stream is None or line.stream == stream) and (
                        match := pattern.search(line.text)
                    ):
                        matches.append(match)
                scanned = max(scanned, len(self.lines))
                if len(matches) >= count:
                    return matches[:count]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._output_finished():
                    break
                self.cond.wait(min(remaining, 0.5))
        raise AssertionError(
            f"{self.name}: waited {timeout:g}s for {count} line(s) matching {regex!r},"
            f" saw {len(matches)}; exit code {self.proc.poll() if self.proc else None};"
            f" last lines:\n{self.tail()}"
        )

    def _output_finished(self) -> bool:
        return bool(self.readers) and not any(reader.is_alive() for reader in self.readers)

    # -- processes --------------------------------------------------------------------------

    def worker_pids(self) -> set[int]:
        """Pids of the master's running children (its workers)."""
        return {child.pid for child in live_children(self.pid)}

    def ready_workers(self, generation: int | None = None, since: int = 0) -> dict[int, int]:
        """``{pid: generation}`` of the workers the master logged as ready."""
        found = {}
        for match in self.find(READY, since):
            gen = int(match["gen"])
            if generation is None or gen == generation:
                found[int(match["pid"])] = gen
        return found

    def wait_for_workers(self, count: int, timeout: float = DEADLINE) -> set[int]:
        """Wait until exactly ``count`` workers run; return their pids."""
        found: list[set[int]] = []

        def check() -> bool:
            pids = self.worker_pids()
            if len(pids) == count:
                found.append(pids)
                return True
            return False

        wait_until(check, timeout, f"{count} running worker(s)", self.describe)
        return found[-1]

    def send(self, sig: int) -> None:
        """Send ``sig`` to the master."""
        assert self.proc is not None and self.proc.poll() is None, "the master is not running"
        os.kill(self.pid, sig)

    def wait_exit(self, timeout: float = DEADLINE) -> int:
        """Wait for the master to exit; return its exit code."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name}: master did not exit within {timeout:g}s; last lines:\n{self.tail()}"
            ) from None

    def describe(self) -> str:
        return f"workers now: {sorted(self.worker_pids())}; last lines:\n{self.tail()}"


# -- clients ------------------------------------------------------------------------------------


def http_get(address: tuple[str, int], path: str = "/pid", timeout: float = 10.0) -> str:
    """One GET on a fresh connection; returns the body (asserts a 200)."""
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 200, f"GET {path}: {response.status} {body!r}"
        return body
    finally:
        conn.close()


def parse_pid_body(body: str) -> tuple[int, int]:
    """``(pid, generation)`` from a ``/pid`` answer."""
    pid, generation = body.split()
    return int(pid), int(generation)


#: Errors meaning "the server closed this connection before answering".
_CLOSED_BEFORE_RESPONSE = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
)


@dataclass
class Failure:
    """A request that failed, as the load generator saw it."""

    client: int
    at: float
    error: str
    keepalive: bool
    reused: bool

    def __str__(self) -> str:
        kind = "keep-alive" if self.keepalive else "fresh"
        reused = " (reused connection)" if self.reused else ""
        return f"client {self.client} [{kind}{reused}] at {self.at:.3f}: {self.error}"


@dataclass
class LoadStats:
    """Counts shared by the client threads (updated under ``cond``)."""

    successes: int = 0
    failures: list[Failure] = field(default_factory=list)
    retried: list[Failure] = field(default_factory=list)
    seen: collections.Counter[tuple[int, int]] = field(default_factory=collections.Counter)
    slowest: float = 0.0


class LoadGenerator:
    """Client threads sending GETs in a loop until stopped (or a time or count limit).

    ``keepalive_clients`` hold one persistent HTTP/1.1 connection each, as browsers
    and HTTP libraries do: a request that fails on a *reused* connection before
    any response arrives (the server closed the idle connection as the request
    was sent) is retried once on a new connection, as those clients do, and
    recorded in ``retried``; a second failure is a failure.  ``fresh_clients``
    open a new connection for every request (``Connection: close``): nothing
    excuses a failure there.  Every failure is recorded with its error.
    """

    def __init__(
        self,
        address: tuple[str, int],
        *,
        keepalive_clients: int = 4,
        fresh_clients: int = 4,
        path: str = "/pid",
        timeout: float = 10.0,
        max_duration: float = 90.0,
        max_requests: int = 500_000,
    ) -> None:
        self.address = address
        self.path = path
        self.timeout = timeout
        self.max_requests = max_requests
        self.deadline = 0.0
        self.max_duration = max_duration
        self.stats = LoadStats()
        self.cond = threading.Condition()
        self.stopping = threading.Event()
        self.started_at = 0.0
        self.threads = [
            threading.Thread(
                target=self._client,
                args=(n, n < keepalive_clients),
                name=f"load-client-{n}",
                daemon=True,
            )
            for n in range(keepalive_clients + fresh_clients)
        ]

    # -- control ----------------------------------------------------------------------------

    def start(self) -> LoadGenerator:
        self.started_at = time.monotonic()
        self.deadline = self.started_at + self.max_duration
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> LoadGenerator:
        """Stop the clients and join them (each finishes its current request first)."""
        self.stopping.set()
        for thread in self.threads:
            if thread.ident is not None:  # started
                thread.join(self.timeout + 5)
        alive = [thread.name for thread in self.threads if thread.is_alive()]
        assert not alive, f"load clients did not stop: {alive}"
        return self

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- observation ------------------------------------------------------------------------

    @property
    def successes(self) -> int:
        with self.cond:
            return self.stats.successes

    @property
    def failures(self) -> list[Failure]:
        with self.cond:
            return list(self.stats.failures)

    @property
    def retried(self) -> list[Failure]:
        with self.cond:
            return list(self.stats.retried)

    def seen(self) -> collections.Counter[tuple[int, int]]:
        """How many answers came from each ``(pid, generation)``."""
        with self.cond:
            return collections.Counter(self.stats.seen)

    def wait_for_successes(self, count: int, timeout: float = DEADLINE) -> None:
        """Wait until ``count`` more requests than now have succeeded."""
        deadline = time.monotonic() + timeout
        with self.cond:
            target = self.stats.successes + count
            while self.stats.successes < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not any(t.is_alive() for t in self.threads):
                    raise AssertionError(
                        f"load: {self.stats.successes} successes, wanted {target} within"
                        f" {timeout:g}s; {self.report()}"
                    )
                self.cond.wait(min(remaining, 0.5))

    def wait_for_answer_from(self, pids: Iterable[int], timeout: float = DEADLINE) -> None:
        """Wait until every pid in ``pids`` has answered at least once."""
        wanted = set(pids)
        deadline = time.monotonic() + timeout
        with self.cond:
            while not wanted <= {pid for pid, _ in self.stats.seen}:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"load: no answer from {wanted - {p for p, _ in self.stats.seen}};"
                        f" {self.report()}"
                    )
                self.cond.wait(min(remaining, 0.5))

    def report(self) -> str:
        with self.cond:
            stats = self.stats
            lines = [
                f"{stats.successes} successes, {len(stats.failures)} failures,"
                f" {len(stats.retried)} retried on a closed keep-alive connection,"
                f" slowest {stats.slowest:.2f}s, answers by (pid, generation):"
                f" {dict(stats.seen)}"
            ]
            lines += [f"  failure: {failure}" for failure in stats.failures[:20]]
            lines += [f"  retried: {failure}" for failure in stats.retried[:5]]
        return "\n".join(lines)

    # -- the clients ------------------------------------------------------------------------

    def _running(self) -> bool:
        if self.stopping.is_set() or time.monotonic() > self.deadline:
            return False
        with self.cond:
            done = self.stats.successes + len(self.stats.failures)
        return done < self.max_requests

    def _client(self, number: int, keepalive: bool) -> None:
        conn: http.client.HTTPConnection | None = None
        answered_on_conn = 0
        headers = {} if keepalive else {"Connection": "close"}
        try:
            while self._running():
                if conn is None:
                    conn = http.client.HTTPConnection(*self.address, timeout=self.timeout)
                    answered_on_conn = 0
                reused = answered_on_conn > 0
                started = time.monotonic()
                stage = "request"
                try:
                    conn.request("GET", self.path, headers=headers)
                    stage = "response"
                    response = conn.getresponse()
                    stage = "body"
                    body = response.read().decode()
                except Exception as exc:
                    conn.close()
                    conn = None
                    failure = Failure(
                        number,
                        time.monotonic() - self.started_at,
                        f"{stage}: {type(exc).__name__}: {exc}",
                        keepalive,
                        reused,
                    )
                    retry = (
                        reused
                        and stage in ("request", "response")
                        and isinstance(exc, _CLOSED_BEFORE_RESPONSE)
                    )
                    self._record(failure=failure, retry=retry)
                    continue
                answered_on_conn += 1
                elapsed = time.monotonic() - started
                if response.status != 200:
                    self._record(
                        failure=Failure(
                            number,
                            time.monotonic() - self.started_at,
                            f"status {response.status}: {body!r}",
                            keepalive,
                            reused,
                        )
                    )
                else:
                    self._record(answer=parse_pid_body(body), elapsed=elapsed)
                if not keepalive or response.will_close:
                    conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()

    def _record(
        self,
        *,
        answer: tuple[int, int] | None = None,
        elapsed: float = 0.0,
        failure: Failure | None = None,
        retry: bool = False,
    ) -> None:
        with self.cond:
            if failure is not None:
                (self.stats.retried if retry else self.stats.failures).append(failure)
            if answer is not None:
                self.stats.successes += 1
                self.stats.seen[answer] += 1
                self.stats.slowest = max(self.stats.slowest, elapsed)
            self.cond.notify_all()


class WorkerCountSampler:
    """Samples the master's running children in a thread, recording the largest count."""

    def __init__(self, server: ServerProcess, interval: float = 0.002) -> None:
        self.server = server
        self.interval = interval
        self.stopping = threading.Event()
        self.samples = 0
        self.largest: set[int] = set()
        self.thread = threading.Thread(target=self._run, name="worker-sampler", daemon=True)

    def _run(self) -> None:
        while not self.stopping.is_set():
            pids = self.server.worker_pids()
            self.samples += 1
            if len(pids) > len(self.largest):
                self.largest = pids
            self.stopping.wait(self.interval)

    def __enter__(self) -> WorkerCountSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "sampler did not stop"


def workers_alive_timeline(server: ServerProcess) -> list[tuple[int, str]]:
    """From the master's log: the number of unreaped workers after each spawn or exit."""
    spawn = re.compile(SPAWNED)
    exited = re.compile(EXITED)
    alive: set[int] = set()
    timeline = []
    with server.cond:
        lines = [line for line in server.lines if line.stream == "err"]
    for line in lines:
        if match := spawn.search(line.text):
            alive.add(int(match["pid"]))
        elif match := exited.search(line.text):
            alive.discard(int(match["pid"]))
        else:
            continue
        timeline.append((len(alive), line.text))
    return timeline


def unused_socket_connect_refused(address: tuple[str, int]) -> bool:
    """True if a TCP connection to ``address`` is refused (nothing listens there)."""
    with socket.socket() as sock:
        sock.settimeout(5)
        try:
            sock.connect(address)
        except ConnectionRefusedError:
            return True
    return False


def serving_timeline(server: ServerProcess) -> list[tuple[int, str]]:
    """From the master's log: how many workers serve (ready, not retiring) after each event."""
    ready = re.compile(READY)
    retiring = re.compile(RETIRING)
    exited = re.compile(EXITED)
    serving: set[int] = set()
    timeline = []
    with server.cond:
        lines = [line for line in server.lines if line.stream == "err"]
    for line in lines:
        if match := ready.search(line.text):
            serving.add(int(match["pid"]))
        elif (match := retiring.search(line.text)) or (match := exited.search(line.text)):
            serving.discard(int(match["pid"]))
        else:
            continue
        timeline.append((len(serving), line.text))
    return timeline


def format_timeline(timeline: list[tuple[int, str]]) -> str:
    return "\n".join(f"{count:3d}  {text}" for count, text in timeline)
