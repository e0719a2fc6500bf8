"""prefork.ops.systemd: sd_notify datagrams, sd_listen_fds, inherited sockets.

Notifications go to real AF_UNIX datagram sockets (a path in a private
directory, and the abstract namespace).  Socket activation runs real child
processes: a small exec wrapper puts sockets at descriptors 3, 4... and sets
``LISTEN_PID`` to its own pid before exec'ing Python (exec keeps the pid, so
the child sees variables meant for it), and, when installed, systemd's own
``systemd-socket-activate`` does the same with Unix sockets it binds itself.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import TIMEOUT, ipv6_available, recv_all, short_tmpdir, wait_for

from prefork.errors import ConfigError
from prefork.ops import systemd

# -- notify ----------------------------------------------------------------------------------


@pytest.fixture
def manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd, bound to a path; NOTIFY_SOCKET names it."""
    with (
        short_tmpdir() as directory,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
    ):
        path = os.path.join(directory, "notify")
        sock.bind(path)
        sock.settimeout(TIMEOUT)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        yield sock


@pytest.fixture
def abstract_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """The same, bound in the abstract namespace (``NOTIFY_SOCKET=@name``)."""
    name = f"prefork-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(TIMEOUT)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield sock


def received(sock: socket.socket) -> bytes:
    """The next datagram the stand-in manager got."""
    return sock.recv(65536)


@pytest.mark.parametrize(
    ("send", "payload"),
    [
        pytest.param(lambda: systemd.ready(), b"READY=1", id="ready"),
        pytest.param(
            lambda: systemd.ready("serving on :8000"),
            b"READY=1\nSTATUS=serving on :8000",
            id="ready-status",
        ),
        pytest.param(lambda: systemd.stopping(), b"STOPPING=1", id="stopping"),
        pytest.param(
            lambda: systemd.stopping("draining"),
            b"STOPPING=1\nSTATUS=draining",
            id="stopping-status",
        ),
        pytest.param(lambda: systemd.status("4 workers"), b"STATUS=4 workers", id="status"),
        pytest.param(
            lambda: systemd.status("two\nlines"), b"STATUS=two lines", id="status-one-line"
        ),
        pytest.param(lambda: systemd.mainpid(4321), b"MAINPID=4321", id="mainpid"),
        pytest.param(lambda: systemd.notify("WATCHDOG=1"), b"WATCHDOG=1", id="notify"),
        pytest.param(
            lambda: systemd.notify("STATUS=\u00e9t\u00e9"),
            "STATUS=\u00e9t\u00e9".encode(),
            id="notify-utf8",
        ),
    ],
)
def test_notify_payloads(manager: socket.socket, send: Callable[[], bool], payload: bytes) -> None:
    assert send() is True
    assert received(manager) == payload


def test_reloading_sends_monotonic_timestamp(manager: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd.reloading() is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = received(manager).decode().split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_reloading_with_status(manager: socket.socket) -> None:
    assert systemd.reloading("new generation") is True
    lines = received(manager).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=")
    assert lines[2:] == ["STATUS=new generation"]


def test_notify_abstract_namespace(abstract_manager: socket.socket) -> None:
    assert systemd.ready("up") is True
    assert received(abstract_manager) == b"READY=1\nSTATUS=up"


def test_notify_without_socket_is_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert systemd.ready() is False


def test_notify_never_raises_on_a_broken_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    with short_tmpdir() as directory:
        missing = os.path.join(directory, "gone")
        monkeypatch.setenv("NOTIFY_SOCKET", missing)
        assert systemd.ready() is False

        # A stream socket where a datagram socket belongs: the send fails.
        stream_path = os.path.join(directory, "stream")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stream:
            stream.bind(stream_path)
            stream.listen()
            monkeypatch.setenv("NOTIFY_SOCKET", stream_path)
            assert systemd.stopping() is False

        # Not a socket at all.
        Path(directory, "file").write_text("")
        monkeypatch.setenv("NOTIFY_SOCKET", os.path.join(directory, "file"))
        assert systemd.status("x") is False

    monkeypatch.setenv("NOTIFY_SOCKET", f"@prefork-test-nobody-{uuid.uuid4().hex}")
    assert systemd.ready() is False


@pytest.mark.parametrize("address", ["relative/notify", "vsock:2:1234", "  "])
def test_notify_ignores_unsupported_addresses(
    monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert systemd.ready() is False


# -- listen_fds in this process ------------------------------------------------------------------


@pytest.fixture
def listen_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A clean slate: none of the LISTEN_* variables set (monkeypatch restores them)."""
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def listen_variables() -> dict[str, str]:
    """The LISTEN_* variables now set in this process."""
    return {k: v for k, v in os.environ.items() if k.startswith("LISTEN_")}


def test_listen_fds_without_variables(listen_env: pytest.MonkeyPatch) -> None:
    assert systemd.listen_fds() == []


def test_listen_fds_meant_for_another_process(listen_env: pytest.MonkeyPatch) -> None:
    listen_env.setenv("LISTEN_PID", str(os.getppid()))
    listen_env.setenv("LISTEN_FDS", "2")
    listen_env.setenv("LISTEN_FDNAMES", "a:b")
    assert systemd.listen_fds(unset_environment=False) == []
    assert listen_variables() == {
        "LISTEN_PID": str(os.getppid()),
        "LISTEN_FDS": "2",
        "LISTEN_FDNAMES": "a:b",
    }
    assert systemd.listen_fds() == []
    assert listen_variables() == {}


def test_listen_fds_zero(listen_env: pytest.MonkeyPatch) -> None:
    listen_env.setenv("LISTEN_PID", str(os.getpid()))
    listen_env.setenv("LISTEN_FDS", "0")
    assert systemd.listen_fds() == []
    assert listen_variables() == {}


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"LISTEN_PID": "abc", "LISTEN_FDS": "1"}, "invalid LISTEN_PID='abc'"),
        ({"LISTEN_PID": "-1", "LISTEN_FDS": "1"}, "invalid LISTEN_PID='-1'"),
        ({"LISTEN_PID": "0", "LISTEN_FDS": "1"}, "invalid LISTEN_PID='0'"),
        ({"LISTEN_PID": "", "LISTEN_FDS": "1"}, "invalid LISTEN_PID=''"),
        ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "two"}, "invalid LISTEN_FDS='two'"),
        ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "-2"}, "invalid LISTEN_FDS='-2'"),
        ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "1.5"}, "invalid LISTEN_FDS='1.5'"),
        ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "99999999999"}, "invalid LISTEN_FDS="),
        (
            {"LISTEN_PID": "{pid}", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "http"},
            "LISTEN_FDNAMES='http' has 1 names for LISTEN_FDS=2 descriptors",
        ),
        (
            {"LISTEN_PID": "{pid}", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "a:b"},
            "LISTEN_FDNAMES='a:b' has 2 names for LISTEN_FDS=1 descriptors",
        ),
    ],
)
@pytest.mark.parametrize("unset", [True, False])
def test_listen_fds_malformed(
    listen_env: pytest.MonkeyPatch, variables: dict[str, str], message: str, unset: bool
) -> None:
    expected = {name: value.format(pid=os.getpid()) for name, value in variables.items()}
    for name, value in expected.items():
        listen_env.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        systemd.listen_fds(unset_environment=unset)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)
    assert listen_variables() == ({} if unset else expected)


# -- listen_fds in an activated child ----------------------------------------------------------

#: Runs as the activated process: reports what listen_fds() and socket_from_fd() saw, on
#: stdout, or (argv[2] == "accept") over a connection it accepts on the first socket.
ACTIVATED_CHILD = textwrap.dedent(
    """
    import json, os, sys
    from prefork.ops import systemd
    from prefork.errors import ConfigError

    report = {"pid": os.getpid()}
    try:
        fds = systemd.listen_fds(unset_environment=sys.argv[1] == "unset")
    except ConfigError as exc:
        report["error"] = str(exc)
        fds = []
    report["fds"] = fds
    report["inheritable"] = [os.get_inheritable(fd) for fd, _ in fds]
    report["env"] = {k: v for k, v in os.environ.items() if k.startswith("LISTEN_")}
    sockets = [systemd.socket_from_fd(fd) for fd, _ in fds]
    report["sockets"] = [
        [sock.family.name, sock.type.name, systemd.is_listening(sock)] for sock in sockets
    ]
    if sys.argv[2] == "accept":  # prove the first socket is usable: serve the report
        conn, _ = sockets[0].accept()
        with conn:
            conn.sendall(json.dumps(report).encode())
    else:
        print(json.dumps(report))
    """
)

#: The exec wrapper: moves the descriptors named in argv to 3, 4, ..., sets LISTEN_PID
#: to its own pid and execs the rest of argv, which keeps the pid: the child sees
#: variables meant for it, as under systemd.  (The job of `sh -c 'LISTEN_PID=$$ exec
#: ...'`, but it can also move descriptors numbered above 9.)
ACTIVATE = textwrap.dedent(
    """
    import fcntl, os, sys
    split = sys.argv.index("--")
    fds = [int(fd) for fd in sys.argv[1:split]]
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]  # clear of 3, 4, ...
    for fd in fds:
        os.close(fd)
    for target, fd in enumerate(high, start=3):
        os.dup2(fd, target)  # inheritable, like a descriptor systemd passes
        os.close(fd)
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.environ.setdefault("LISTEN_FDS", str(len(fds)))
    command = sys.argv[split + 1:]
    os.execv(command[0], command)
    """
)


def run_activated(
    sockets: list[socket.socket],
    env: dict[str, str],
    unset: bool = True,
    connect_to: Any = None,
) -> dict[str, Any]:
    """Start ACTIVATED_CHILD with ``sockets`` at fds 3, 4, ... and ``env``; return its report.

    With ``connect_to`` (an address of the first socket, a TCP one) the report
    comes over a connection the child accepts; otherwise from its stdout.
    """
    fds = [sock.fileno() for sock in sockets]
    base = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    command = [sys.executable, "-c", ACTIVATE, *map(str, fds), "--", sys.executable, "-c"]
    command += [ACTIVATED_CHILD, "unset" if unset else "keep", "accept" if connect_to else "print"]
    with subprocess.Popen(
        command, pass_fds=fds, env=base | env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        try:
            if connect_to is not None:
                with socket.create_connection(connect_to, timeout=TIMEOUT) as client:
                    reply = recv_all(client)
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
        finally:
            if proc.returncode is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    report: dict[str, Any] = json.loads(reply if connect_to is not None else stdout)
    assert report["pid"] == proc.pid
    return report


def test_listen_fds_in_activated_child() -> None:
    with (
        short_tmpdir() as directory,
        socket.create_server(("127.0.0.1", 0)) as tcp,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
    ):
        unix.bind(os.path.join(directory, "admin.sock"))
        unix.listen()
        udp.bind(("127.0.0.1", 0))
        report = run_activated(
            [tcp, unix, udp], {"LISTEN_FDNAMES": "http:admin:"}, connect_to=tcp.getsockname()
        )
    assert report["fds"] == [[3, "http"], [4, "admin"], [5, "unknown"]]
    assert report["inheritable"] == [False, False, False]
    assert report["env"] == {}
    assert report["sockets"] == [
        ["AF_INET", "SOCK_STREAM", True],
        ["AF_UNIX", "SOCK_STREAM", True],
        ["AF_INET", "SOCK_DGRAM", False],
    ]


def test_listen_fds_unnamed_environment_kept() -> None:
    family, host = (socket.AF_INET6, "::1") if ipv6_available() else (socket.AF_INET, "127.0.0.1")
    with (
        socket.create_server(("127.0.0.1", 0)) as first,
        socket.create_server((host, 0), family=family) as second,
    ):
        report = run_activated([first, second], {}, unset=False)
    assert report["fds"] == [[3, "unknown"], [4, "unknown"]]
    assert report["inheritable"] == [False, False]
    assert report["env"] == {"LISTEN_PID": str(report["pid"]), "LISTEN_FDS": "2"}
    assert report["sockets"][1][0] == socket.AddressFamily(family).name


def test_listen_fds_descriptor_not_open() -> None:
    with socket.create_server(("127.0.0.1", 0)) as only:
        report = run_activated([only], {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"})
    assert report["error"] == "LISTEN_FDS=2, but descriptor 4 is unusable: Bad file descriptor"
    assert report["env"] == {}


# -- socket_from_fd ----------------------------------------------------------------------------


def inherited(sock: socket.socket) -> int:
    """A duplicate of ``sock``'s descriptor, as a process would inherit it."""
    return os.dup(sock.fileno())


@pytest.mark.parametrize(
    ("family", "kind", "address"),
    [
        pytest.param(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0), id="tcp"),
        pytest.param(socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", 0), id="udp"),
        pytest.param(socket.AF_UNIX, socket.SOCK_STREAM, "sock", id="unix-stream"),
        pytest.param(socket.AF_UNIX, socket.SOCK_DGRAM, "sock", id="unix-dgram"),
        pytest.param(socket.AF_UNIX, socket.SOCK_SEQPACKET, "sock", id="unix-seqpacket"),
    ],
)
def test_socket_from_fd_detects_family_and_type(family: int, kind: int, address: Any) -> None:
    with short_tmpdir() as directory, socket.socket(family, kind) as original:
        original.bind(os.path.join(directory, address) if family == socket.AF_UNIX else address)
        if kind != socket.SOCK_DGRAM:
            original.listen()
        with systemd.socket_from_fd(inherited(original)) as sock:
            assert (sock.family, sock.type) == (family, kind)
            assert sock.getsockname() == original.getsockname()
            assert systemd.is_listening(sock) is (kind != socket.SOCK_DGRAM)


def test_socket_from_fd_serves_connections() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as original,
        systemd.socket_from_fd(inherited(original)) as sock,
    ):
        assert sock.gettimeout() is None
        with socket.create_connection(sock.getsockname(), timeout=TIMEOUT) as client:
            conn, _ = sock.accept()
            with conn:
                conn.sendall(b"hello")
                assert client.recv(5) == b"hello"


@pytest.mark.parametrize("blocking", [True, False])
@pytest.mark.parametrize("default_timeout", [None, 2.5])
def test_socket_from_fd_keeps_the_blocking_flag(
    blocking: bool, default_timeout: float | None
) -> None:
    """O_NONBLOCK is shared with systemd's copy: left alone, and the timeout agrees with it."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(default_timeout)
    try:
        with socket.create_server(("127.0.0.1", 0)) as original:
            os.set_blocking(original.fileno(), blocking)
            with systemd.socket_from_fd(inherited(original)) as sock:
                assert sock.gettimeout() == (None if blocking else 0.0)
                assert os.get_blocking(original.fileno()) is blocking
    finally:
        socket.setdefaulttimeout(previous)


def test_socket_from_fd_refuses_a_connected_socket() -> None:
    left, right = socket.socketpair()
    with left, right:
        fd = inherited(left)
        try:
            with pytest.raises(ConfigError) as caught:
                systemd.socket_from_fd(fd)
            assert str(caught.value) == (
                f"inherited socket {fd} is not listening (Accept=yes is not supported)"
            )
            os.fstat(fd)  # still open: it remains the caller's
        finally:
            os.close(fd)


def test_socket_from_fd_refuses_what_is_not_a_socket() -> None:
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(ConfigError, match=f"^inherited descriptor {read_end} is not a sock"):
            systemd.socket_from_fd(read_end)
    finally:
        os.close(read_end)
        os.close(write_end)
    with pytest.raises(ConfigError, match="Bad file descriptor"):
        systemd.socket_from_fd(read_end)


# -- under systemd-socket-activate -------------------------------------------------------------

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")


def try_connect(path: str) -> socket.socket | None:
    """A connection to the Unix socket at ``path``, or ``None`` while nobody listens."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(TIMEOUT)
    try:
        client.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        client.close()
        return None
    return client


@pytest.mark.skipif(SOCKET_ACTIVATE is None, reason="systemd-socket-activate is not installed")
def test_under_systemd_socket_activate() -> None:
    """systemd's own tool binds two named Unix sockets; the child finds them by name.

    The tool execs the command on the first connection attempt, so the test's
    connection is both the trigger and, accepted by the child, the report channel.
    """
    assert SOCKET_ACTIVATE is not None
    with short_tmpdir() as directory:
        http, admin = os.path.join(directory, "http.sock"), os.path.join(directory, "adm.sock")
        command = [SOCKET_ACTIVATE, "--listen", http, "--listen", admin, "--fdname=http:admin"]
        command += [sys.executable, "-c", ACTIVATED_CHILD, "unset", "accept"]
        with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
            try:
                connections: list[socket.socket] = []

                def connected() -> bool:
                    assert proc.poll() is None, "systemd-socket-activate exited"
                    client = try_connect(http)
                    if client is not None:
                        connections.append(client)
                    return client is not None

                wait_for(connected, message="systemd-socket-activate to listen")
                with connections[0] as client:
                    report = json.loads(recv_all(client))
                _, stderr = proc.communicate(timeout=TIMEOUT)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    proc.communicate()
        assert proc.returncode == 0, stderr.decode()
    assert report["pid"] == proc.pid  # exec'd in place: LISTEN_PID was its own
    assert report["fds"] == [[3, "http"], [4, "admin"]]
    assert report["inheritable"] == [False, False]
    assert report["env"] == {}
    assert report["sockets"] == [["AF_UNIX", "SOCK_STREAM", True]] * 2


# -- the example units in docs/systemd ---------------------------------------------------------

UNITS = Path(__file__).resolve().parent.parent / "docs" / "systemd"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def unit_settings(name: str) -> dict[str, list[str]]:
    """``KEY: [values]`` of a unit file (sections merged; backslash continuations joined)."""
    settings: dict[str, list[str]] = {}
    text = (UNITS / name).read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(" ".join(value.split()))
    return settings


def test_example_units_agree_with_each_other() -> None:
    service = unit_settings("prefork.service")
    sockets = {name: unit_settings(name) for name in ("prefork.socket", "prefork-unix.socket")}
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert service["KillMode"] == ["mixed"]
    [command] = service["ExecStart"]
    arguments = command.split()
    assert arguments[0].endswith("/prefork")
    assert ":" in arguments[-1]  # MODULE:OBJECT
    graceful = float(arguments[arguments.index("--graceful-timeout") + 1])
    assert float(service["TimeoutStopSec"][0]) > graceful
    # Every socket the units pass is bound by name, and nothing else is.
    binds = [arguments[i + 1] for i, arg in enumerate(arguments) if arg == "--bind"]
    names = [unit["FileDescriptorName"][0] for unit in sockets.values()]
    assert sorted(binds) == sorted(f"fd://{name}" for name in names)
    assert sockets["prefork.socket"]["ListenStream"] == ["8000"]
    assert sockets["prefork-unix.socket"]["ListenStream"][0].startswith("/")
    assert sockets["prefork-unix.socket"]["Service"] == ["prefork.service"]
    assert set(service["Requires"][0].split()) == set(sockets)


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_example_units_verify() -> None:
    """systemd itself accepts the units (with ExecStart= pointing at an existing prefork)."""
    assert SYSTEMD_ANALYZE is not None
    prefork_command = Path(sys.executable).parent / "prefork"
    with short_tmpdir() as directory:
        for unit in UNITS.iterdir():
            text = unit.read_text().replace("/srv/app/.venv/bin/prefork", str(prefork_command))
            Path(directory, unit.name).write_text(text)
        result = subprocess.run(
            [SYSTEMD_ANALYZE, "verify", "--man=no", *sorted(os.listdir(directory))],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
