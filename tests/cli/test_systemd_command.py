"""The command under systemd: socket activation and readiness notification, end to end.

Socket activation goes through the real ``systemd-socket-activate``, which binds
the sockets, waits for the first connection, then execs the command in its own
process with ``LISTEN_PID``/``LISTEN_FDS``/``LISTEN_FDNAMES`` set.  Notifications
are received on an ``AF_UNIX`` datagram socket the test binds and names in
``$NOTIFY_SOCKET``, with ``SO_PASSCRED`` so that every datagram carries the pid
of its sender, as systemd sees it.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from engine.harness import DEADLINE, READY, http_get, pid_gone, wait_until

from .harness import LISTENING, CommandProcess, UnixHTTPConnection

pytestmark = pytest.mark.timeout(120)

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
needs_socket_activate = pytest.mark.skipif(
    SOCKET_ACTIVATE is None, reason="systemd-socket-activate is not installed"
)

#: What systemd-socket-activate logs once it has bound ADDRESS as descriptor N.
SA_LISTENING = r"^Listening on (?P<address>\S+) as (?P<fd>\d+)\.$"
#: Logged by the master as it starts serving (its pid is the one LISTEN_PID named).
SERVING = r"master (?P<pid>\d+): serving"
UPGRADE = r"upgrade: started a new master, pid (?P<pid>\d+)"

#: Run by a small exec wrapper: put the socket at fd ``argv[1]`` as descriptor 3 and
#: pass it to ``argv[2:]`` by the sd_listen_fds protocol (systemd-socket-activate
#: passes such descriptors through, ahead of the ones it binds itself).  This lets
#: a test hand over a TCP socket it bound to port 0, with no port to guess.
PASS_FD_AS_3 = textwrap.dedent("""
    import os, sys
    fd = int(sys.argv[1])
    if fd != 3:
        os.dup2(fd, 3)
        os.close(fd)
    os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
    os.execv(sys.argv[2], sys.argv[2:])
""")


# -- socket activation ----------------------------------------------------------------------


class ActivatedCommand(CommandProcess):
    """``systemd-socket-activate -l ADDRESS... -- python -m prefork ARGS``.

    systemd-socket-activate hands the command only ``PATH``, ``TERM``, ``USER``,
    ``HOME`` and what ``-E`` sets, so the environment the command needs is given
    with ``-E``.  With ``pass_fd``, that descriptor reaches the command first, as
    descriptor 3.
    """

    def __init__(
        self,
        *args: Any,
        cwd: Path,
        listen: list[Path | str],
        fdnames: list[str] | None = None,
        pass_fd: int | None = None,
    ) -> None:
        super().__init__(*args, cwd=cwd, name="socket-activate")
        self.listen = [str(address) for address in listen]
        self.fdnames = fdnames
        self.pass_fd = pass_fd

    def argv(self) -> list[str]:
        assert SOCKET_ACTIVATE is not None
        argv = [SOCKET_ACTIVATE, *(f"--listen={address}" for address in self.listen)]
        if self.fdnames:
            argv.append(f"--fdname={':'.join(self.fdnames)}")
        argv += ["-E", "PYTHONUNBUFFERED=1", "--", sys.executable, "-m", "prefork", *self.args]
        if self.pass_fd is not None:
            argv = [sys.executable, "-c", PASS_FD_AS_3, str(self.pass_fd), *argv]
        return argv

    def launch(self, **popen: Any) -> ActivatedCommand:
        env = dict(os.environ)
        for name in ("PREFORK_CONFIG", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(name, None)
        self.proc = subprocess.Popen(
            self.argv(),
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=env,
            pass_fds=() if self.pass_fd is None else (self.pass_fd,),
            **popen,
        )
        for stream, pipe in (("out", self.proc.stdout), ("err", self.proc.stderr)):
            reader = threading.Thread(
                target=self._read, args=(stream, pipe), name=f"{self.name}-{stream}", daemon=True
            )
            reader.start()
            self.readers.append(reader)
        return self

    def wait_bound(self) -> None:
        """Wait until systemd-socket-activate listens on every ``-l`` address."""
        self.wait_for_line(SA_LISTENING, count=len(self.listen))


@pytest.fixture
def activate(app_dir: Path) -> Iterator[Any]:
    """``activate(*args, listen=[...], fdnames=None, pass_fd=None)``, launched, bound."""
    started: list[ActivatedCommand] = []

    def launch(*args: Any, **options: Any) -> ActivatedCommand:
        command = ActivatedCommand(*args, cwd=app_dir, **options)
        started.append(command)
        command.launch()
        command.wait_bound()
        return command

    yield launch
    for command in reversed(started):
        command.close()


def response_body(conn: http.client.HTTPConnection) -> str:
    """The body of the response to the request sent on ``conn`` (asserts a 200)."""
    response = conn.getresponse()
    body = response.read().decode()
    assert response.status == 200, (response.status, body)
    return body


def unix_get(path: Path | str, url: str = "/pid") -> str:
    """One GET over the Unix socket at ``path``, on a fresh connection; the body."""
    conn = UnixHTTPConnection(path)
    try:
        conn.request("GET", url)
        return response_body(conn)
    finally:
        conn.close()


def pid_of(body: str) -> int:
    """The worker pid in the body of ``/pid`` (``PID GENERATION``)."""
    return int(body.split()[0])


def execed_lines(command: CommandProcess) -> list[str]:
    """The stderr lines written after systemd-socket-activate exec'd the command."""
    lines = [line.text for line in command.lines if line.stream == "err"]
    starts = [n for n, text in enumerate(lines) if text.startswith("Execing ")]
    assert starts, f"systemd-socket-activate never exec'd the command:\n{command.tail()}"
    return lines[starts[0] + 1 :]


@needs_socket_activate
def test_named_sockets_from_socket_activation_are_served_by_one_pool(
    activate, app_dir: Path
) -> None:
    web, admin = app_dir / "a.sock", app_dir / "b.sock"
    command = activate("-w", 2, "--bind", "fd://web", "--bind", "fd://admin", "myapp:Hello",
                       listen=[web, admin], fdnames=["web", "admin"])  # fmt: skip
    # systemd-socket-activate execs the command only once a client knocks: this first
    # request waits in the backlog of "web" and must be answered by a worker.
    first = UnixHTTPConnection(web)
    try:
        first.request("GET", "/pid")
        command.wait_for_line(r"^Execing ")
        ready = command.wait_for_line(READY, count=2)
        first_pid = pid_of(response_body(first))
    finally:
        first.close()
    workers = {int(match["pid"]) for match in ready}
    assert first_pid in workers
    # The command runs in the process systemd-socket-activate exec'd: LISTEN_PID was its pid.
    master = command.wait_for_line(SERVING)[0]
    assert int(master["pid"]) == command.pid
    assert [m["address"] for m in command.find(LISTENING)] == [f"unix:{web}", f"unix:{admin}"]
    assert command.worker_pids() == workers

    # One pool serves both descriptors: every worker answers on each of them.
    answered: dict[Path, set[int]] = {web: set(), admin: set()}

    def both_workers_answered_on_both() -> bool:
        for path, pids in answered.items():
            pids.add(pid_of(unix_get(path)))
        return all(pids == workers for pids in answered.values())

    wait_until(both_workers_answered_on_both, DEADLINE, "both workers on both sockets",
               lambda: f"answers: {answered}; workers: {workers}")  # fmt: skip
    assert command.worker_pids() == workers  # no new workers meanwhile

    command.send(signal.SIGTERM)
    assert command.wait_exit() == 0


@needs_socket_activate
def test_without_bind_every_activated_socket_is_served(activate, app_dir: Path) -> None:
    # A TCP socket bound here to port 0 (so no port is guessed) and passed through
    # systemd-socket-activate as descriptor 3, then two Unix sockets it binds (4, 5).
    tcp = socket.create_server(("127.0.0.1", 0))
    try:
        port = tcp.getsockname()[1]
        first, second = app_dir / "a.sock", app_dir / "b.sock"
        command = activate("-w", 1, "myapp:Hello", listen=[first, second], pass_fd=tcp.fileno())
    finally:
        tcp.close()  # the command holds its own copy
    command.wait_for_line(r"^Received 1 descriptors via the environment\.$")
    body = http_get(("127.0.0.1", port), "/pid")  # the knock; waits for the worker
    worker = command.wait_for_line(READY)[0]
    assert pid_of(body) == int(worker["pid"])
    addresses = [m["address"] for m in command.wait_for_line(LISTENING, count=3)]
    # Exactly the passed sockets, in descriptor order: not the default 127.0.0.1:8000.
    assert addresses == [f"tcp://127.0.0.1:{port}", f"unix:{first}", f"unix:{second}"]
    assert len(command.find(LISTENING)) == 3
    assert pid_of(unix_get(first)) == pid_of(body)
    assert pid_of(unix_get(second)) == pid_of(body)
    command.send(signal.SIGTERM)
    assert command.wait_exit() == 0


@needs_socket_activate
def test_bind_to_an_fd_name_not_passed_exits_2_with_one_line(activate, app_dir: Path) -> None:
    web = app_dir / "a.sock"
    command = activate("-w", 1, "--bind", "fd://nosuchname", "myapp:Hello",
                       listen=[web], fdnames=["web"])  # fmt: skip
    with socket.socket(socket.AF_UNIX) as knock:
        knock.settimeout(DEADLINE)
        knock.connect(str(web))
        assert command.wait_exit() == 2
    command.close()  # joins the output readers
    lines = execed_lines(command)
    assert lines == ["prefork: bind 'fd://nosuchname': no such socket was passed to prefork"]


# -- sd_notify ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Notice:
    """One datagram to ``$NOTIFY_SOCKET``: who sent it and its assignments."""

    pid: int
    fields: dict[str, str]

    @classmethod
    def parse(cls, pid: int, data: bytes) -> Notice:
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        return cls(pid, fields)


class NotifySocket:
    """The service manager's end of ``sd_notify``: a datagram socket with ``SO_PASSCRED``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.received: list[Notice] = []

    def close(self) -> None:
        self.sock.close()

    def _receive(self, timeout: float | None) -> Notice:
        self.sock.settimeout(timeout)
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pids = [
            struct.unpack("3i", cmsg_data[:12])[0]
            for level, kind, cmsg_data in ancillary
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
        ]
        assert len(pids) == 1, f"no sender credentials with {data!r}"
        notice = Notice.parse(pids[0], data)
        self.received.append(notice)
        return notice

    def receive(self, command: CommandProcess, timeout: float = DEADLINE) -> Notice:
        """The next datagram; fails after ``timeout`` seconds with the command's output."""
        try:
            return self._receive(timeout)
        except TimeoutError:
            raise AssertionError(
                f"no notification within {timeout:g}s (received so far: {self.received});"
                f" last lines:\n{command.tail()}"
            ) from None

    def pending(self) -> list[Notice]:
        """The datagrams already queued, without waiting."""
        queued = []
        with contextlib.suppress(BlockingIOError):
            while True:
                queued.append(self._receive(0.0))
        return queued


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    receiver = NotifySocket(tmp_path / "notify.sock")
    yield receiver
    receiver.close()


#: An application whose workers stop at a gate while they import it: each sends
#: ``GATE=<pid>`` to ``$NOTIFY_SOCKET``, then opens the FIFO ``$GATE_FIFO`` for
#: reading, which blocks until the test holds it open.  Only workers wait (their
#: title says so): the master's import probe goes straight through.
GATED_APP = """
import os
import socket

import setproctitle

from myapp import Hello

if setproctitle.getproctitle().startswith("prefork: worker"):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.sendto(f"GATE={os.getpid()}".encode(), os.environ["NOTIFY_SOCKET"])
    with open(os.environ["GATE_FIFO"], "rb"):
        pass
"""


@contextlib.contextmanager
def gate_open(fifo: Path) -> Iterator[None]:
    """Hold the gate FIFO open (``O_RDWR`` never blocks): workers at the gate go on."""
    fd = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)
    try:
        yield
    finally:
        os.close(fd)


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def expect_gated_workers(notify: NotifySocket, command: CommandProcess, count: int) -> set[int]:
    """Receive ``count`` GATE notices from workers and check nothing else is queued."""
    gated = set()
    for _ in range(count):
        notice = notify.receive(command)
        assert set(notice.fields) == {"GATE"}, notice
        assert notice.pid == int(notice.fields["GATE"]) != command.pid
        gated.add(notice.pid)
    # The workers are importing the application: the master must not claim readiness.
    assert notify.pending() == []
    return gated


def test_ready_reloading_and_stopping_are_notified_in_order(
    app_dir: Path, tmp_path: Path, notify_socket: NotifySocket
) -> None:
    (app_dir / "gated.py").write_text(GATED_APP)
    gate = tmp_path / "gate.fifo"
    os.mkfifo(gate)
    env = {"NOTIFY_SOCKET": notify_socket.path, "GATE_FIFO": str(gate)}
    command = CommandProcess("-w", 2, "-b", "127.0.0.1:0", "gated:Hello", cwd=app_dir, env=env)
    try:
        command.start()
        first = expect_gated_workers(notify_socket, command, 2)
        assert not command.find(READY)
        with gate_open(gate):
            ready = notify_socket.receive(command)
            assert ready == Notice(command.pid, {"READY": "1", "STATUS": "2 workers x 4 threads"})
        # The workers it announced are the gated ones, as its log says.
        announced = command.wait_for_line(READY, count=2)
        assert {int(match["pid"]) for match in announced} == first
        assert command.worker_pids() == first

        mark = command.mark()
        before = monotonic_usec()
        command.send(signal.SIGHUP)
        reloading = notify_socket.receive(command)
        assert reloading.pid == command.pid
        assert set(reloading.fields) == {"RELOADING", "MONOTONIC_USEC"}, reloading
        assert reloading.fields["RELOADING"] == "1"
        assert before <= int(reloading.fields["MONOTONIC_USEC"]) <= monotonic_usec()
        # The new generation boots while the old one serves; READY=1 only once it is up.
        second = expect_gated_workers(notify_socket, command, 2)
        assert not second & first
        assert http_get(command.address, "/pid").split()[1] == "1"
        with gate_open(gate):
            ready = notify_socket.receive(command)
            assert ready == Notice(command.pid, {"READY": "1", "STATUS": "2 workers x 4 threads"})
        announced = command.wait_for_line(READY, count=2, since=mark)
        assert {(int(m["pid"]), m["gen"]) for m in announced} == {(pid, "2") for pid in second}
        # ...and once the old generation is gone.
        assert command.worker_pids() == second
        assert all(pid_gone(pid) for pid in first)

        command.send(signal.SIGTERM)
        stopping = notify_socket.receive(command)
        assert stopping == Notice(command.pid, {"STOPPING": "1"})
        assert command.wait_exit() == 0
        assert notify_socket.pending() == []
    finally:
        command.close()


def start_and_upgrade(
    app_dir: Path, notify: NotifySocket
) -> tuple[CommandProcess, int, list[Notice]]:
    """Start the command with ``$NOTIFY_SOCKET``, USR2 it; the new master's pid and notices.

    Returns once the new master has notified ``READY=1``.
    """
    env = {"NOTIFY_SOCKET": notify.path}
    command = CommandProcess("-w", 2, "-b", "127.0.0.1:0", "myapp:Hello", cwd=app_dir, env=env)
    try:
        command.start()
        ready = notify.receive(command)
        assert ready == Notice(command.pid, {"READY": "1", "STATUS": "2 workers x 4 threads"})
        old_workers = command.worker_pids()
        mark = command.mark()
        command.send(signal.SIGUSR2)
        new_pid = int(command.wait_for_line(UPGRADE, since=mark)[0]["pid"])
        notices = [notify.receive(command), notify.receive(command)]
        # Its workers are up (it logged them ready, on the stderr it inherited)...
        new_ready = command.wait_for_line(rf"\[{new_pid}\] .*{READY}", count=2, since=mark)
        new_workers = {int(match["pid"]) for match in new_ready}
        assert not new_workers & old_workers
        wait_until(lambda: {c.pid for c in psutil_children(new_pid)} == new_workers,
                   DEADLINE, "the new master's workers")  # fmt: skip
    except BaseException:
        command.close()
        raise
    return command, new_pid, notices


def psutil_children(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return psutil.Process(pid).children()
    return []


def stop_new_master(command: CommandProcess, new_pid: int) -> None:
    """TERM the re-executed master (no longer the test's child once the old one exited)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(new_pid, signal.SIGTERM)
    wait_until(lambda: pid_gone(new_pid), DEADLINE, "the new master to exit", command.tail)


def test_usr2_new_master_notifies_mainpid_then_ready(
    app_dir: Path, notify_socket: NotifySocket
) -> None:
    command, new_pid, notices = start_and_upgrade(app_dir, notify_socket)
    try:
        assert notices == [
            Notice(new_pid, {"MAINPID": str(new_pid)}),
            Notice(new_pid, {"READY": "1", "STATUS": "2 workers x 4 threads"}),
        ]
        assert new_pid != command.pid
        assert http_get(command.address, "/pid")
        command.send(signal.SIGTERM)  # the old master leaves; the new one serves on
        assert command.wait_exit() == 0
        body = http_get(command.address, "/pid")
        assert int(body.split()[0]) in {c.pid for c in psutil_children(new_pid)}
        stop_new_master(command, new_pid)
    finally:
        command.close()


def test_old_master_leaving_after_usr2_does_not_notify_stopping(
    app_dir: Path, notify_socket: NotifySocket
) -> None:
    """Once the new master took over (``MAINPID=``), the old one's exit is not the service's.

    With ``NotifyAccess=all`` (which docs/systemd/prefork.service asks for to upgrade
    this way) systemd acts on ``STOPPING=1`` from any process of the unit: the
    service would enter ``deactivating`` and be killed after ``TimeoutStopSec=``,
    new master included.
    """
    command, new_pid, notices = start_and_upgrade(app_dir, notify_socket)
    try:
        assert notices[0] == Notice(new_pid, {"MAINPID": str(new_pid)})
        old_pid = command.pid
        command.send(signal.SIGTERM)
        assert command.wait_exit() == 0
        # Everything the old master sent is queued by now: it sent before exiting.
        from_old = [notice for notice in notify_socket.pending() if notice.pid == old_pid]
        assert not [n for n in from_old if "STOPPING" in n.fields], from_old
        stop_new_master(command, new_pid)
    finally:
        command.close()


def test_plain_start_and_stop_notify_ready_then_stopping_from_the_master(
    start_command, notify_socket: NotifySocket
) -> None:
    command = start_command("-w", 3, "--threads", 2, "-b", "127.0.0.1:0", "myapp:Hello",
                            env={"NOTIFY_SOCKET": notify_socket.path})  # fmt: skip
    ready = notify_socket.receive(command)
    assert ready == Notice(command.pid, {"READY": "1", "STATUS": "3 workers x 2 threads"})
    command.wait_for_line(READY, count=3)  # logged before, read from the pipe now
    for _ in range(4):
        http_get(command.address, "/pid")
    command.send(signal.SIGTERM)
    assert command.wait_exit() == 0
    # Nothing else, and nothing from a worker: only the master speaks for the service.
    notify_socket.pending()
    assert notify_socket.received == [
        ready,
        Notice(command.pid, {"STOPPING": "1"}),
    ]
