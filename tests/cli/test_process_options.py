"""The command's process options end to end: privileges, umask, Unix socket files,
logging config, memory limit, ``--reload`` and ``--check-config``."""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from engine.harness import (
    DEADLINE,
    EXITED,
    READY,
    RETIRING,
    LoadGenerator,
    http_get,
    wait_until,
)

from .harness import LISTENING, CommandProcess, UnixHTTPConnection, run_command, tcp_address

pytestmark = pytest.mark.timeout(120)


# -- helpers ------------------------------------------------------------------------------------


def unix_get(path: Path | str, url: str = "/pid") -> str:
    """One GET over the Unix socket at ``path``; the body (asserts a 200)."""
    conn = UnixHTTPConnection(path)
    try:
        conn.request("GET", url)
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 200, (response.status, body)
        return body
    finally:
        conn.close()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def proc_status(pid: int, field: str) -> str:
    """A field of ``/proc/PID/status`` (``Umask``, ``Groups``...)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name == field:
                return value.strip()
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``prefork: ...`` line of a command that exited 2."""
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("prefork: "), lines[0]
    return lines[0]


@pytest.fixture
def launched() -> Iterator[list[CommandProcess]]:
    """Commands a test launched itself (with Popen options); all closed after it."""
    commands: list[CommandProcess] = []
    yield commands
    for command in reversed(commands):
        command.close()


# -- privileges ---------------------------------------------------------------------------------


def _nobody() -> tuple[str, int, str, int]:
    """``(user, uid, group, gid)`` to switch to: nobody, and nogroup or gid 65534."""
    try:
        uid = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        pytest.skip("no user 'nobody'")
    try:
        group, gid = "nogroup", grp.getgrnam("nogroup").gr_gid
    except KeyError:
        group, gid = "65534", 65534
    return "nobody", uid, group, gid


@pytest.fixture
def world_readable_app_dir(app_dir: Path) -> Iterator[Path]:
    """The test application in a root-owned 0o755 directory that ``nobody`` can read.

    ``tmp_path`` lives under pytest's 0o700 directory, out of nobody's reach (and
    not ours to open up), so this is a directory of its own under the system temp
    directory, removed afterwards.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another user")
    directory = Path(tempfile.mkdtemp(prefix="prefork-privileges-"))
    try:
        directory.chmod(0o755)
        closed = [p for p in directory.parents if not os.stat(p).st_mode & stat.S_IXOTH]
        if closed:
            pytest.skip(f"{closed[0]} is not searchable by others: nobody cannot reach the app")
        shutil.copy(app_dir / "myapp.py", directory / "myapp.py")
        (directory / "myapp.py").chmod(0o644)
        yield directory
    finally:
        shutil.rmtree(directory)


def test_user_and_group_are_switched_after_binding(world_readable_app_dir: Path, launched):
    user, uid, group, gid = _nobody()
    sock_path = world_readable_app_dir / "app.sock"
    command = CommandProcess("-w", 2, "-u", user, "-g", group, "-b", "127.0.0.1:0",
                             "-b", f"unix:{sock_path}", "myapp:Hello",
                             cwd=world_readable_app_dir)  # fmt: skip
    launched.append(command)
    command.start(binds=2)
    ready = command.wait_for_line(READY, count=2)
    workers = {int(match["pid"]) for match in ready}
    assert command.wait_for_workers(2) == workers
    for pid in (command.pid, *workers):
        process = psutil.Process(pid)
        assert tuple(process.uids()) == (uid, uid, uid), pid
        assert tuple(process.gids()) == (gid, gid, gid), pid
        assert "0" not in proc_status(pid, "Groups").split(), pid  # root's groups are gone
    # Both sockets were bound as root before the switch: nobody could not have created
    # a file in this root-owned 0o755 directory; the socket file is handed to nobody.
    socket_stat = os.stat(sock_path)
    assert stat.S_ISSOCK(socket_stat.st_mode)
    assert (socket_stat.st_uid, socket_stat.st_gid) == (uid, gid)
    assert int(http_get(command.address, "/pid").split()[0]) in workers
    assert int(unix_get(sock_path).split()[0]) in workers
    # A reload forks the new workers from the unprivileged master.
    mark = command.mark()
    command.send(signal.SIGHUP)
    new = {int(m["pid"]) for m in command.wait_for_line(READY, count=2, since=mark)}
    for pid in new:
        assert tuple(psutil.Process(pid).uids()) == (uid, uid, uid)
    command.send(signal.SIGTERM)
    assert command.wait_exit() == 0


# -- umask and Unix socket file modes -----------------------------------------------------------


def launch_with_umask(
    launched: list[CommandProcess], app_dir: Path, *args: object, binds: int = 1
) -> CommandProcess:
    """Start the command from a parent whose umask is 0o022 (what prefork changes is its own)."""
    command = CommandProcess(*args, cwd=app_dir)
    launched.append(command)
    command.launch(umask=0o022)
    command.wait_for_line(LISTENING, count=binds)
    return command


def test_umask_applies_to_master_workers_and_socket_files(app_dir: Path, launched) -> None:
    sock_path, pidfile = app_dir / "app.sock", app_dir / "app.pid"
    command = launch_with_umask(launched, app_dir, "-w", 2, "--umask", "0o077",
                                "-b", f"unix:{sock_path}", "-p", pidfile,
                                "myapp:Hello")  # fmt: skip
    workers = {int(m["pid"]) for m in command.wait_for_line(READY, count=2)}
    for pid in (command.pid, *workers):
        assert proc_status(pid, "Umask") == "0077", pid
    assert mode_of(sock_path) == 0o777 & ~0o077  # a socket file is created 0o777 & ~umask
    assert mode_of(pidfile) == 0o644  # the pidfile is 0o644 whatever the umask, by design
    assert int(unix_get(sock_path).split()[0]) in workers
    command.send(signal.SIGTERM)
    assert command.wait_exit() == 0


def test_default_umask_is_022(app_dir: Path, launched) -> None:
    sock_path = app_dir / "app.sock"
    command = CommandProcess("-w", 1, "-b", f"unix:{sock_path}", "myapp:Hello", cwd=app_dir)
    launched.append(command)
    command.launch(umask=0o077)  # the parent's umask does not leak through
    command.wait_for_line(READY)
    assert proc_status(command.pid, "Umask") == "0022"
    assert mode_of(sock_path) == 0o755


def test_log_file_is_created_with_the_umask(app_dir: Path, launched) -> None:
    """``--umask`` covers the files the master writes: its log file too."""
    log = app_dir / "prefork.log"
    command = CommandProcess("-w", 1, "--umask", "0o077", "--log-file", log, "-b", "127.0.0.1:0",
                             "myapp:Hello", cwd=app_dir)  # fmt: skip
    launched.append(command)
    command.launch(umask=0o022)
    wait_until(lambda: log.exists() and re.search(READY, log.read_text()), DEADLINE, "the log")
    assert mode_of(log) == 0o600


@pytest.mark.parametrize(
    ("umask", "socket_mode", "expected"),
    [(None, "0o600", 0o600), ("0o077", "0o666", 0o666), ("0o000", "660", 0o660)],
)
def test_unix_socket_mode_is_exact(app_dir, launched, umask, socket_mode, expected) -> None:
    stream, dgram = app_dir / "stream.sock", app_dir / "dgram.sock"
    umask_args = ["--umask", umask] if umask else []
    command = launch_with_umask(launched, app_dir, "-w", 1, *umask_args,
                                "--unix-socket-mode", socket_mode, "-b", f"unix:{stream}",
                                "myapp:Hello", binds=1)  # fmt: skip
    assert mode_of(stream) == expected
    assert unix_get(stream, "/").startswith("v1 ")
    echo = launch_with_umask(launched, app_dir, "-w", 1, *umask_args,
                             "--unix-socket-mode", socket_mode, "-b", f"unix-dgram:{dgram}",
                             "myapp:DatagramEcho")  # fmt: skip
    assert mode_of(dgram) == expected
    for each in (command, echo):
        each.send(signal.SIGTERM)
        assert each.wait_exit() == 0


# -- stale Unix socket files --------------------------------------------------------------------


def test_stale_unix_socket_file_is_replaced(start_command, app_dir: Path) -> None:
    path = app_dir / "app.sock"
    with socket.socket(socket.AF_UNIX) as gone:  # a server that exited without unlinking
        gone.bind(str(path))
        gone.listen()
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    with socket.socket(socket.AF_UNIX) as client, pytest.raises(ConnectionRefusedError):
        client.connect(str(path))
    command = start_command("-w", 1, "-b", f"unix:{path}", "myapp:Hello")
    assert command.addresses == [f"unix:{path}"]
    command.wait_for_line(READY)
    assert unix_get(path, "/").startswith("v1 ")


def test_unix_socket_someone_listens_on_is_refused(app_dir: Path) -> None:
    path = app_dir / "app.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen()
        result = run_command("-w", 1, "-b", f"unix:{path}", "myapp:Hello", cwd=app_dir)
        line = one_error_line(result)
        assert line == f"prefork: cannot bind unix:{path}: Address already in use"
        # The live server keeps its socket: a client still reaches it.
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(DEADLINE)
            client.connect(str(path))
            live.settimeout(DEADLINE)
            accepted, _ = live.accept()
            accepted.close()


def test_a_regular_file_at_the_socket_path_is_refused(app_dir: Path) -> None:
    path = app_dir / "app.sock"
    path.write_text("not a socket\n")
    result = run_command("-w", 1, "-b", f"unix:{path}", "myapp:Hello", cwd=app_dir)
    line = one_error_line(result)
    assert line == f"prefork: cannot bind unix:{path}: the file exists and is not a socket"
    assert path.read_text() == "not a socket\n"


# -- --log-config -------------------------------------------------------------------------------

#: An application that logs from its workers, through the root logger's handlers.
LOGGING_APP = """
import logging
import os

from myapp import Hello

log = logging.getLogger("logapp")


class Logged(Hello):
    def do_GET(self):
        log.info("worker %d answers %s", os.getpid(), self.path)
        super().do_GET()
"""


def log_config(log: Path) -> str:
    return textwrap.dedent(f"""
        version = 1
        disable_existing_loggers = false

        [formatters.plain]
        format = "[%(process)d] %(name)s: %(message)s"

        [handlers.file]
        class = "logging.FileHandler"
        filename = {json.dumps(str(log))}
        formatter = "plain"

        [root]
        level = "INFO"
        handlers = ["file"]
    """)


def test_log_config_sends_master_and_worker_lines_to_its_file(app_dir: Path, launched) -> None:
    (app_dir / "logapp.py").write_text(LOGGING_APP)
    log = app_dir / "app.log"
    (app_dir / "logging.toml").write_text(log_config(log))
    command = CommandProcess("-w", 2, "--log-config", "logging.toml", "-b", "127.0.0.1:0",
                             "logapp:Logged", cwd=app_dir)  # fmt: skip
    launched.append(command)
    command.launch()

    def lines() -> str:
        return log.read_text() if log.exists() else ""

    wait_until(lambda: len(re.findall(READY, lines())) == 2, DEADLINE, "2 workers ready",
               lambda: lines())  # fmt: skip
    master = rf"^\[{command.pid}\] "
    listening = re.search(master + r"prefork\.command: " + LISTENING, lines(), re.M)
    assert listening, lines()
    workers = {int(m["pid"]) for m in re.finditer(master + r"prefork\.master: " + READY,
                                                  lines(), re.M)}  # fmt: skip
    assert len(workers) == 2
    body = http_get(tcp_address(listening["address"]), "/pid")
    pid = int(body.split()[0])
    assert pid in workers
    wait_until(lambda: re.search(rf"^\[{pid}\] logapp: worker {pid} answers /pid$", lines(), re.M),
               DEADLINE, "the worker's line", lambda: lines())  # fmt: skip
    command.send(signal.SIGTERM)
    assert command.wait_exit() == 0
    assert len(re.findall(master + r"prefork\.master: " + EXITED, lines(), re.M)) == 2
    assert command.tail() == ""  # nothing on stdout or stderr: it all went to the file


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.toml", "version = \n", "log config bad.toml: Invalid value"),
        ("bad.json", '{"version": 1, "handlers": ', "log config bad.json: Expecting value"),
        (
            "bad.toml",
            '[handlers.file]\nclass = "logging.NoSuchHandler"\n[root]\nhandlers = ["file"]\n',
            "log config bad.toml: Unable to configure handler 'file'",
        ),
        ("bad.toml", "version = 2\n", "log config bad.toml: Unsupported version: 2"),
        ("bad.toml", None, "cannot read log config bad.toml: No such file or directory"),
    ],
)
def test_malformed_log_config_exits_2_with_one_line(app_dir: Path, name, text, message) -> None:
    if text is not None:
        (app_dir / name).write_text(text)
    result = run_command("--log-config", name, "-b", "127.0.0.1:0", "myapp:Hello", cwd=app_dir)
    assert message in one_error_line(result)


# -- --max-worker-memory ------------------------------------------------------------------------

#: ``/grow`` keeps 64 MiB of written (so resident) memory alive in the worker.
GROWING_APP = """
import os

from myapp import Hello

KEPT = []


class Growing(Hello):
    def do_GET(self):
        if self.path != "/grow":
            return super().do_GET()
        KEPT.append(b"\\x01" * (64 << 20))
        body = f"{os.getpid()} {len(KEPT)}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
"""


def test_a_worker_over_max_worker_memory_is_replaced_gracefully(start_command, app_dir) -> None:
    (app_dir / "growing.py").write_text(GROWING_APP)
    command = start_command("-w", 2, "--max-worker-memory", "48M", "-b", "127.0.0.1:0",
                            "growing:Growing")  # fmt: skip
    workers = {int(m["pid"]) for m in command.wait_for_line(READY, count=2)}
    load = LoadGenerator(command.address, keepalive_clients=2, fresh_clients=2).start()
    try:
        load.wait_for_successes(100)
        mark = command.mark()
        grown = int(http_get(command.address, "/grow").split()[0])
        assert grown in workers
        over = command.wait_for_line(r"uses (\d+) MiB, over max_worker_memory 48 MiB", since=mark)
        assert int(over[0][1]) >= 64
        retired = command.wait_for_line(RETIRING, since=mark)[0]
        assert (int(retired["pid"]), retired["reason"]) == (grown, "replaced (memory)")
        # Its replacement was ready before it was asked to stop.
        replacement = command.wait_for_line(READY, since=mark)[0]
        new_pid = int(replacement["pid"])
        exited = command.wait_for_line(EXITED, since=mark)[0]
        assert (int(exited["pid"]), exited["how"]) == (grown, "exit code 0")
        load.wait_for_answer_from({new_pid})
        load.wait_for_successes(100)
    finally:
        load.stop()
    print(load.report())
    assert not load.failures, load.report()
    assert command.worker_pids() == (workers - {grown}) | {new_pid}
    assert len(command.find(RETIRING)) == 1  # the other worker and the new one stay
    assert psutil.Process(new_pid).memory_info().rss < 48 << 20


# -- --reload -----------------------------------------------------------------------------------

RELOADING_APP = """
import http.server
import os

from greeting import GREETING

VERSION = "v1"


class App(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        body = f"{VERSION} {GREETING} {os.getpid()}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
"""


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_reload_restarts_workers_when_a_source_file_changes(start_command, app_dir) -> None:
    (app_dir / "reloading.py").write_text(RELOADING_APP)
    (app_dir / "greeting.py").write_text('GREETING = "hello"\n')
    command = start_command("-w", 2, "--reload", "-b", "127.0.0.1:0", "reloading:App")
    first = {int(m["pid"]) for m in command.wait_for_line(READY, count=2)}
    assert http_get(command.address, "/").startswith("v1 hello ")
    # The master takes its reference mtimes on its first look, at the end of a turn of
    # its loop: a signal it logs proves a later turn began, so the first look is done.
    command.send(signal.SIGUSR1)
    command.wait_for_line(r"master: received SIGUSR1")

    mark = command.mark()
    edit(app_dir / "reloading.py", 'VERSION = "v1"', 'VERSION = "v2"')
    command.wait_for_line(r"reload: source files changed", since=mark)
    second = {int(m["pid"]) for m in command.wait_for_line(READY + "$", count=2, since=mark)}
    assert not second & first
    wait_until(lambda: http_get(command.address, "/").startswith("v2 hello "), DEADLINE,
               "the new code", command.describe)  # fmt: skip

    # A module the application imports is watched too.
    mark = command.mark()
    edit(app_dir / "greeting.py", '"hello"', '"bonjour"')
    command.wait_for_line(r"reload: source files changed", since=mark)
    wait_until(lambda: http_get(command.address, "/").startswith("v2 bonjour "), DEADLINE,
               "the new greeting", command.describe)  # fmt: skip
    assert command.wait_for_workers(2).isdisjoint(first | second)


# -- --check-config -----------------------------------------------------------------------------


def test_check_config_loads_the_app_and_leaves_no_socket_behind(app_dir: Path) -> None:
    sock_path = app_dir / "app.sock"
    good = run_command("--check-config", "-w", 2, "-b", "127.0.0.1:0",
                       "-b", f"unix:{sock_path}", "myapp:Hello", cwd=app_dir)  # fmt: skip
    assert good.returncode == 0, good
    assert good.stdout.startswith(
        "prefork: the configuration is valid: myapp:Hello loads as a http-handler application,"
    )
    assert good.stderr == ""
    wsgi = run_command("--check-config", "--wsgi", "-b", "127.0.0.1:0", "myapp:wsgi_app",
                       cwd=app_dir)  # fmt: skip
    assert wsgi.returncode == 0, wsgi
    assert "myapp:wsgi_app loads as a wsgi application" in wsgi.stdout
    bad = run_command("--check-config", "-b", "127.0.0.1:0",
                      "-b", f"unix:{sock_path}", "myapp:NOT_AN_APP", cwd=app_dir)  # fmt: skip
    assert "is not a request handler class or a server class" in one_error_line(bad)
    broken_source = app_dir / "broken.py"
    broken_source.write_text("raise RuntimeError('broken deploy')\n")
    broken = run_command("--check-config", "-b", "127.0.0.1:0", "broken:App", cwd=app_dir)
    assert broken.returncode == 2
    first, *frames = broken.stderr.splitlines()
    assert first == "prefork: cannot import 'broken': RuntimeError: broken deploy"
    assert 'broken.py", line 1, in <module>' in "\n".join(frames)  # the user's frame follows
    assert not sock_path.exists()
