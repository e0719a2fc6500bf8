"""The ``prefork`` command end to end: binds, settings, pidfile, reloads, bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from engine.harness import READY, http_get, wait_until

from .harness import CommandProcess, run_command

pytestmark = pytest.mark.timeout(90)


def test_help_reads_like_gunicorns(app_dir: Path) -> None:
    result = run_command("--help", cwd=app_dir)
    assert result.returncode == 0
    for option in ("-b ADDRESS, --bind ADDRESS", "-w INT, --workers INT", "--threads INT",
                   "-t SECONDS, --timeout SECONDS", "--graceful-timeout", "--max-requests",
                   "--max-requests-jitter", "--backlog", "--reuse-port", "--preload",
                   "-p FILE, --pid FILE", "-c FILE, --config FILE", "-n NAME, --name NAME",
                   "-u USER, --user USER", "-g GROUP, --group GROUP", "-m UMASK, --umask UMASK",
                   "--log-level", "--log-file", "--log-config", "--check-config", "--version",
                   "--wsgi", "--reload", "--max-worker-memory", "--metrics-bind"):  # fmt: skip
        # Python 3.13's argparse writes "-b, --bind ADDRESS" where 3.12 wrote "-b ADDRESS, ...".
        short, comma, long = option.partition(", ")
        if comma:
            flag, _, metavar = short.partition(" ")
            pattern = f"{re.escape(flag)}(?: {metavar})?, {re.escape(long)}"
            assert re.search(pattern, result.stdout), option
        else:
            assert option in result.stdout, option
    version = run_command("--version", cwd=app_dir)
    assert version.returncode == 0 and version.stdout.startswith("prefork ")


def test_http_handler_on_tcp_and_unix_served_by_the_same_workers(start_command, app_dir):
    sock_path = app_dir / "h.sock"
    server = start_command("-w", 2, "-b", "127.0.0.1:0", "-b", f"unix:{sock_path}",
                           "myapp:Hello", binds=2)  # fmt: skip
    server.wait_for_line(READY, count=2)
    workers = server.wait_for_workers(2)
    tcp_pids = {int(http_get(server.address, "/").split()[1]) for _ in range(10)}
    assert tcp_pids <= workers
    unix_pids = set()
    for _ in range(10):
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(str(sock_path))
            client.sendall(b"GET / HTTP/1.0\r\n\r\n")
            reply = b""
            while chunk := client.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200"), reply
        unix_pids.add(int(reply.split(b"\r\n\r\n", 1)[1].split()[1]))
    assert unix_pids <= workers


def test_ipv6_bind(start_command) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    with socket.socket(socket.AF_INET6) as probe:
        try:
            probe.bind(("::1", 0))
        except OSError:
            pytest.skip("no ::1")
    server = start_command("-w", 1, "-b", "[::1]:0", "myapp:Hello")
    assert server.addresses[0].startswith("tcp://[::1]:")
    assert http_get(server.address, "/").startswith("v1 ")


def test_stream_and_datagram_handlers(start_command, app_dir) -> None:
    echo = start_command("-w", 2, "-b", "tcp://127.0.0.1:0", "myapp:Echo")
    with socket.create_connection(echo.address, timeout=10) as client:
        client.sendall(b"hello\n")
        assert client.recv(100).endswith(b" hello\n")
    dgram_path = app_dir / "d.sock"
    dgram = start_command("-w", 2, "-b", "udp://127.0.0.1:0", "-b", f"unix-dgram:{dgram_path}",
                          "myapp:DatagramEcho", binds=2)  # fmt: skip
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.sendto(b"ping", dgram.address)
        assert client.recv(100).endswith(b" ping")
    client_path = app_dir / "c.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.bind(str(client_path))
        client.sendto(b"pong", str(app_dir / "d.sock"))
        assert client.recv(100).endswith(b" pong")


def test_fd_bind_uses_an_inherited_socket(app_dir: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        fd = listener.fileno()
        command = CommandProcess("-w", 1, "-b", f"fd://{fd}", "myapp:Hello", cwd=app_dir)
        try:
            command.launch(pass_fds=[fd])
            command.wait_for_line(READY)
            assert http_get(listener.getsockname(), "/").startswith("v1 ")
        finally:
            command.close()
    finally:
        listener.close()


def test_settings_precedence_file_env_command_line(app_dir: Path) -> None:
    (app_dir / "prefork.toml").write_text("workers = 3\nthreads = 7\nmax-requests = 10\n")
    resolved = json.loads(
        run_command("--print-config", "--threads", "9", cwd=app_dir,
                    env={"PREFORK_THREADS": "8", "PREFORK_MAX_REQUESTS": "20"}).stdout
    )  # fmt: skip
    assert (resolved["workers"], resolved["threads"], resolved["max_requests"]) == (3, 9, 20)
    assert resolved["timeout"] == 30.0  # default
    (app_dir / "prefork.toml").unlink()
    (app_dir / "pyproject.toml").write_text("[tool.prefork]\nworkers = 5\n")
    resolved = json.loads(run_command("--print-config", cwd=app_dir).stdout)
    assert resolved["workers"] == 5
    (app_dir / "other.toml").write_text("workers = 6\n")
    resolved = json.loads(run_command("--print-config", "-c", "other.toml", cwd=app_dir).stdout)
    assert resolved["workers"] == 6


@pytest.mark.parametrize(
    ("args", "files", "message"),
    [
        (["-b", "nonsense", "myapp:Hello"], {}, "bad bind 'nonsense'"),
        (["-b", "127.0.0.1:99999", "myapp:Hello"], {}, "out of range"),
        (["nosuchmodule:App"], {}, "cannot import 'nosuchmodule'"),
        (["myapp:Missing"], {}, "has no object 'Missing'"),
        (["myapp:NOT_AN_APP"], {}, "is not a request handler class or a server class"),
        (["--wsgi", "myapp:NOT_AN_APP"], {}, "is not a WSGI application"),
        (["myapp:Hello"], {"prefork.toml": "wrokers = 2\n"}, "unknown setting 'wrokers'"),
        (["myapp:Hello"], {"prefork.toml": "workers = 'many'\n"}, "bad value 'many' for workers"),
        (["-w", "0", "myapp:Hello"], {}, "bad value '0' for workers"),
        (["-u", "no-such-user-x", "myapp:Hello"], {}, "unknown user 'no-such-user-x'"),
        (["-g", "no-such-group-x", "myapp:Hello"], {}, "unknown group 'no-such-group-x'"),
        (["--log-level", "loud", "myapp:Hello"], {}, "bad value 'loud' for loglevel"),
        (["--bogus-option", "myapp:Hello"], {}, "unrecognized option --bogus-option"),
        ([], {}, "no application given"),
    ],
)
def test_bad_input_exits_2_with_one_line(app_dir, args, files, message) -> None:
    for name, text in files.items():
        (app_dir / name).write_text(text)
    result = run_command("-b", "127.0.0.1:0", *args, cwd=app_dir)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("prefork: ") and message in lines[0], lines[0]


def test_address_in_use_exits_2(app_dir: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_command("-b", f"127.0.0.1:{port}", "myapp:Hello", cwd=app_dir)
    assert result.returncode == 2
    assert (
        result.stderr.strip() == f"prefork: cannot bind 127.0.0.1:{port}: Address already in use"
    )


def test_permission_denied_on_bind_exits_2(app_dir: Path) -> None:
    """A directory the command may not write to (root without CAP_DAC_OVERRIDE, via setpriv)."""
    if os.getuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run the command without CAP_DAC_OVERRIDE")
    locked = app_dir / "locked"
    locked.mkdir(mode=0o555)
    result = subprocess.run(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
         sys.executable, "-m", "prefork", "-b", f"unix:{locked / 's.sock'}", "myapp:Hello"],
        cwd=app_dir, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result
    assert (
        result.stderr.strip()
        == f"prefork: cannot bind unix:{locked / 's.sock'}: Permission denied"
    )


def test_pidfile_written_removed_and_guarded(start_command, app_dir: Path) -> None:
    pidfile = app_dir / "run" / "app.pid"
    pidfile.parent.mkdir()
    pidfile.write_text("999999\n")  # stale: no such process
    server = start_command("-w", 1, "-b", "127.0.0.1:0", "-p", pidfile, "myapp:Hello")
    server.wait_for_line(READY)
    assert pidfile.read_text().strip() == str(server.pid)
    second = run_command("-w", 1, "-b", "127.0.0.1:0", "-p", pidfile, "myapp:Hello", cwd=app_dir)
    assert second.returncode == 2
    assert f"held by a running master (pid {server.pid})" in second.stderr
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert not pidfile.exists()


def test_hup_picks_up_changed_code_and_config(start_command, app_dir: Path) -> None:
    (app_dir / "prefork.toml").write_text("workers = 2\n")
    server = start_command("-b", "127.0.0.1:0", "myapp:Hello")
    server.wait_for_line(READY, count=2)
    assert http_get(server.address, "/").startswith("v1 ")
    source = app_dir / "myapp.py"
    source.write_text(source.read_text().replace('VERSION = "v1"', 'VERSION = "v2"'))
    (app_dir / "prefork.toml").write_text("workers = 3\n")
    server.send(signal.SIGHUP)
    server.wait_for_line(r"reload: workers = 3")
    new_workers = server.wait_for_line(READY + r"$", count=5)[2:]
    assert {int(m["gen"]) for m in new_workers} == {2}
    server.wait_for_workers(3)
    wait_until(lambda: http_get(server.address, "/").startswith("v2 "), 20, "the new code")
    assert all(http_get(server.address, "/").startswith("v2 ") for _ in range(10))


def test_failed_reload_keeps_the_old_workers_serving(start_command, app_dir: Path) -> None:
    server = start_command("-w", 1, "-b", "127.0.0.1:0", "--log-level", "info", "myapp:Hello")
    server.wait_for_line(READY)
    source = app_dir / "myapp.py"
    source.write_text(source.read_text() + "\nraise RuntimeError('broken deploy')\n")
    server.send(signal.SIGHUP)
    server.wait_for_line(r"older workers keep serving", timeout=60)
    assert http_get(server.address, "/").startswith("v1 ")
    assert server.proc is not None and server.proc.poll() is None


def test_usr1_reopens_the_log_file(start_command, app_dir: Path) -> None:
    """USR1 after a rotation opens the path anew; a path it cannot open leaves the old file."""
    log = app_dir / "prefork.log"
    server = CommandProcess("-w", 1, "-b", "127.0.0.1:0", "--log-file", log, "myapp:Hello",
                            cwd=app_dir)  # fmt: skip
    try:
        server.launch()
        wait_until(lambda: log.exists() and "ready" in log.read_text(), 20, "the log file")
        log.rename(app_dir / "prefork.log.1")
        os.kill(server.pid, signal.SIGUSR1)
        wait_until(log.exists, 20, "a new log file")
        os.kill(server.pid, signal.SIGTTIN)
        wait_until(lambda: "workers 2" in log.read_text(), 20, "the master's next line")

        rotated = app_dir / "prefork.log.2"
        log.rename(rotated)
        log.mkdir()  # the path cannot be opened as a file any more
        os.kill(server.pid, signal.SIGUSR1)
        wait_until(lambda: "cannot reopen log file" in rotated.read_text(), 20, "the error")
        os.kill(server.pid, signal.SIGTTOU)  # the master still acts, and logs to the old file
        wait_until(lambda: "workers 1" in rotated.read_text(), 20, "the master's next line")
        assert server.proc is not None and server.proc.poll() is None
        log.rmdir()
        os.kill(server.pid, signal.SIGUSR1)
        wait_until(log.exists, 20, "the log file, once its path works again")
    finally:
        server.close()


def test_hup_moves_logging_to_a_new_log_file(start_command, app_dir: Path) -> None:
    config = app_dir / "prefork.toml"
    first, second = app_dir / "first.log", app_dir / "second.log"
    config.write_text(f'logfile = "{first}"\n')
    server = CommandProcess("-c", config, "-w", 1, "-b", "127.0.0.1:0", "myapp:Hello",
                            cwd=app_dir)  # fmt: skip
    try:
        server.launch()
        wait_until(lambda: first.exists() and "ready" in first.read_text(), 20, "the first log")
        config.write_text(f'logfile = "{second}"\n')
        os.kill(server.pid, signal.SIGHUP)
        wait_until(
            lambda: second.exists() and "logging set up again" in second.read_text(),
            20,
            "the second log",
        )
        wait_until(lambda: "generation 2" in second.read_text(), 20, "the new generation's lines")
        assert "second.log" in first.read_text()  # the change is announced in the old one
    finally:
        server.close()


def test_simple_http_request_handler_serves_the_directory(start_command, app_dir: Path) -> None:
    """``prefork http.server:SimpleHTTPRequestHandler`` serves the working directory."""
    (app_dir / "page.txt").write_text("static content\n")
    server = start_command("-w", 1, "-b", "127.0.0.1:0", "http.server:SimpleHTTPRequestHandler")
    assert http_get(server.address, "/page.txt") == "static content\n"


def test_preload_imports_once_so_hup_keeps_the_code(start_command, app_dir: Path) -> None:
    server = start_command("-w", 1, "--preload", "-b", "127.0.0.1:0", "myapp:Hello")
    server.wait_for_line(READY)
    source = app_dir / "myapp.py"
    source.write_text(source.read_text().replace('VERSION = "v1"', 'VERSION = "v2"'))
    server.send(signal.SIGHUP)
    new_worker = server.wait_for_line(READY, count=2)[1]
    assert new_worker["gen"] == "2"
    wait_until(lambda: http_get(server.address, "/").split()[2] == "2", 20, "generation 2")
    assert http_get(server.address, "/").startswith("v1 ")


RPC_APP = """
import os
import xmlrpc.server


class RPCServer(xmlrpc.server.SimpleXMLRPCServer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, logRequests=False, **kwargs)
        self.register_function(os.getpid, "pid")
"""


def test_a_server_class_as_the_application(start_command, app_dir: Path) -> None:
    """``prefork rpcapp:RPCServer``: a SimpleXMLRPCServer subclass, served by the workers."""
    import xmlrpc.client

    (app_dir / "rpcapp.py").write_text(RPC_APP)
    server = start_command("-w", 2, "-b", "127.0.0.1:0", "rpcapp:RPCServer")
    server.wait_for_line(READY, count=2)
    workers = server.wait_for_workers(2)
    host, port = server.address
    with xmlrpc.client.ServerProxy(f"http://{host}:{port}/") as proxy:
        assert proxy.pid() in workers


HOOKS_APP = """
import os
import socketserver

import prefork


def say(text):
    # One write per line: master and workers share the pipe.
    os.write(1, f"{text} {os.getpid()}\\n".encode())


class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.readline())


class HookedServer(prefork.PreforkTCPServer):
    def __init__(self, address, handler=Echo, bind_and_activate=True):
        super().__init__(address, handler, bind_and_activate)

    def when_ready(self):
        say("HOOK when_ready")

    def post_fork(self, worker):
        say("HOOK post_fork")

    def on_reload(self):
        say("HOOK on_reload")

    def on_shutdown(self):
        say("HOOK on_shutdown")
"""


def test_a_server_classs_own_hooks_run_beside_the_commands(start_command, app_dir: Path) -> None:
    (app_dir / "hookapp.py").write_text(HOOKS_APP)
    server = start_command("-w", 2, "-b", "127.0.0.1:0", "hookapp:HookedServer")
    server.wait_for_line(READY, count=2)
    workers = server.wait_for_workers(2)
    master = str(server.pid)
    # stdout (the hooks' lines) and stderr (the log) are read apart: wait for the lines.
    when_ready = server.wait_for_line(r"^HOOK when_ready (\d+)$", stream="out")
    assert [m[1] for m in when_ready] == [master]
    post_fork = server.wait_for_line(r"^HOOK post_fork (\d+)$", count=2, stream="out")
    assert {int(m[1]) for m in post_fork} == workers
    with socket.create_connection(server.address, timeout=10) as conn:
        conn.sendall(b"ping\n")
        assert conn.makefile("rb").readline() == b"ping\n"
    os.kill(server.pid, signal.SIGHUP)
    server.wait_for_line(r"^HOOK on_reload " + master + "$", stream="out")
    server.wait_for_line(r"^HOOK post_fork \d+$", count=4, stream="out")
    os.kill(server.pid, signal.SIGTERM)
    server.wait_for_line(r"^HOOK on_shutdown " + master + "$", stream="out")
    assert server.proc.wait(timeout=20) == 0
