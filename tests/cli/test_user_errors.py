"""Errors a user can act on: where the failure is, in the stream or log file they read."""

from __future__ import annotations

import re
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from engine.harness import DEADLINE, READY, STACK_DUMP, http_get, wait_until

from .harness import CommandProcess, run_command, tcp_address

pytestmark = pytest.mark.timeout(90)

DEEP = """
def inner():
    return undefined_name


def outer():
    return inner()


application = outer()
"""

WORKS = """
def application(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
"""

NOISY = """
import http.server
import threading


def application(environ, start_response):
    if environ["PATH_INFO"] == "/boom":
        raise RuntimeError("boom in the application")
    if environ["PATH_INFO"] == "/hang":
        threading.Event().wait()
    print("printed by the application", flush=True)
    environ["wsgi.errors"].write("written to wsgi.errors\\n")
    environ["wsgi.errors"].flush()
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(204)
        self.end_headers()
"""


@pytest.fixture
def launched() -> Iterator[list[CommandProcess]]:
    """Commands started by a test; each is stopped and reaped afterwards."""
    commands: list[CommandProcess] = []
    yield commands
    for command in reversed(commands):
        command.close()


def launch(launched: list[CommandProcess], cwd: Path, *args: object) -> CommandProcess:
    command = CommandProcess(*map(str, args), cwd=cwd)
    launched.append(command)
    command.launch()
    return command


def wait_for_text(path: Path, regex: str, command: CommandProcess) -> re.Match[str]:
    """Wait until the file at ``path`` has a match of ``regex``; return it."""
    pattern = re.compile(regex, re.MULTILINE)

    def found() -> re.Match[str] | None:
        return pattern.search(path.read_text()) if path.exists() else None

    return wait_until(found, DEADLINE, f"{regex!r} in {path}", command.describe)


# -- 1, 2: import errors show the user's frames ------------------------------------------------


def test_an_import_error_shows_the_users_frames_after_its_line(app_dir: Path) -> None:
    (app_dir / "deep").mkdir()
    (app_dir / "deep" / "__init__.py").write_text("")
    (app_dir / "deep" / "wsgi.py").write_text(DEEP)
    for extra in ([], ["--preload"], ["--log-level", "debug"]):
        result = run_command("--wsgi", *extra, "deep.wsgi:application", cwd=app_dir)
        assert result.returncode == 2, result
        lines = result.stderr.splitlines()
        assert lines[0] == (
            "prefork: cannot import 'deep.wsgi': NameError: name 'undefined_name' is not defined"
        )
        assert lines[1] == "Traceback (most recent call last):"
        where = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', result.stderr)
        assert [(Path(f).name, int(n), fn) for f, n, fn in where] == [
            ("wsgi.py", 10, "<module>"),
            ("wsgi.py", 7, "outer"),
            ("wsgi.py", 3, "inner"),
        ], result.stderr
        assert "importlib" not in result.stderr and "prefork/" not in result.stderr
        assert lines[-1] == "NameError: name 'undefined_name' is not defined"


def test_a_missing_module_stays_one_line(app_dir: Path) -> None:
    result = run_command("--wsgi", "no_such_module:application", cwd=app_dir)
    assert result.returncode == 2
    assert result.stderr == "prefork: cannot import 'no_such_module': no such module\n"


def test_broken_code_after_hup_logs_the_users_traceback_once(app_dir: Path, launched) -> None:
    source = app_dir / "hupapp.py"
    source.write_text(WORKS)
    server = launch(launched, app_dir, "-w", 1, "-b", "127.0.0.1:0", "--wsgi", "hupapp")
    server.wait_for_line(READY)
    source.write_text(DEEP)
    since = server.mark()
    server.send(signal.SIGHUP)
    server.wait_for_line(r"failed to boot .*retrying", count=3, since=since)
    assert http_get(tcp_address(server.find(r"listening on (\S+)")[0][1]), "/") == "ok"
    tracebacks = server.find(r"^Traceback", since)
    assert len(tracebacks) == 1, server.tail()
    assert server.find(r'File ".*hupapp.py", line 3, in inner', since)
    assert not server.find(r'File ".*prefork/(worker|command|appload)\.py"', since)
    first = server.find(r"worker \d+ failed to boot: cannot import 'hupapp': NameError", since)
    assert len(first) == 1, server.tail()


# -- 3: everything a worker writes lands in the log file ---------------------------------------


def test_capture_output_puts_prints_errors_and_tracebacks_in_the_log_file(
    app_dir: Path, launched
) -> None:
    (app_dir / "noisy.py").write_text(NOISY)
    log = app_dir / "app.log"
    server = launch(launched, app_dir, "-w", 1, "-b", "127.0.0.1:0", "--log-file", log,
                    "--capture-output", "--wsgi", "noisy")  # fmt: skip
    address = tcp_address(wait_for_text(log, r"listening on (\S+)$", server)[1])
    wait_for_text(log, READY, server)
    assert http_get(address, "/") == "ok"
    wait_for_text(log, r"^printed by the application$", server)
    wait_for_text(log, r"^written to wsgi.errors$", server)
    with pytest.raises(AssertionError, match="500"):
        http_get(address, "/boom")
    error = wait_for_text(
        log, r"\[\d+\] \[ERROR\] prefork.command: error handling a request from 127.0.0.1:\d+\n"
        r"Traceback \(most recent call last\):\n(.*\n)*?RuntimeError: boom in the application",
        server,
    )  # fmt: skip
    assert error
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    text = log.read_text()
    assert re.search(r"master \d+ exiting \(graceful stop\)$", text.rstrip("\n").splitlines()[-1])
    assert server.lines == [], server.tail()  # nothing left on stdout or stderr


def test_http_server_request_lines_and_stuck_worker_stacks_go_to_the_log_file(
    app_dir: Path, launched
) -> None:
    (app_dir / "noisy.py").write_text(NOISY)
    log = app_dir / "app.log"
    server = launch(launched, app_dir, "-w", 1, "-t", 1, "--graceful-timeout", 1,
                    "-b", "127.0.0.1:0", "--log-file", log, "--capture-output",
                    "--wsgi", "noisy")  # fmt: skip
    address = tcp_address(wait_for_text(log, r"listening on (\S+)$", server)[1])
    wait_for_text(log, READY, server)
    with socket.create_connection(address, timeout=DEADLINE) as client:
        client.sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for_text(log, r"retiring <worker .*>: a request has run for", server)
        wait_for_text(log, STACK_DUMP, server)
        assert client.recv(100) == b""  # the request was cut
    text = log.read_text()
    assert re.search(r'File ".*noisy.py", line 10 in application', text), text
    handler = launch(launched, app_dir, "-w", 1, "-b", "127.0.0.1:0",
                     "--log-file", app_dir / "h.log", "--capture-output",
                     "noisy:Handler")  # fmt: skip
    h_address = tcp_address(wait_for_text(app_dir / "h.log", r"listening on (\S+)$", handler)[1])
    wait_for_text(app_dir / "h.log", READY, handler)
    with pytest.raises(AssertionError, match="204"):
        http_get(h_address, "/request-line")
    wait_for_text(app_dir / "h.log", r'"GET /request-line HTTP/1.1" 204', handler)
    assert server.lines == [] and handler.lines == []


def test_without_capture_the_stacks_still_go_to_the_log_file(app_dir: Path, launched) -> None:
    (app_dir / "noisy.py").write_text(NOISY)
    log = app_dir / "app.log"
    server = launch(launched, app_dir, "-w", 1, "-t", 1, "--graceful-timeout", 1,
                    "-b", "127.0.0.1:0", "--log-file", log, "--wsgi", "noisy")  # fmt: skip
    address = tcp_address(wait_for_text(log, r"listening on (\S+)$", server)[1])
    wait_for_text(log, READY, server)
    with socket.create_connection(address, timeout=DEADLINE) as client:
        client.sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for_text(log, r"dumping its stacks|stacks follow", server)
        wait_for_text(log, r'File ".*noisy.py", line 10 in application', server)
    assert not server.find(STACK_DUMP, stream=None)


# -- 4: unknown options and variables ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-k", "gthread", "--wsgi", "myapp:wsgi_app"], r"option -k: a gunicorn option"),
        (["--wrkers", "2", "myapp:Hello"], r"option --wrkers; did you mean --workers\?"),
        (["--worker-class=gthread", "myapp:Hello"], r"option --worker-class: a gunicorn"),
        (["-x", "myapp:Hello"], r"unrecognized option -x \(see prefork --help\)$"),
    ],
)  # fmt: skip
def test_an_unknown_option_is_named_alone(app_dir: Path, args: list[str], message: str) -> None:
    result = run_command(*args, cwd=app_dir)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), result.stderr
    assert "app" not in lines[0].partition("(")[0].split("option", 1)[1]


def test_an_unknown_prefork_variable_warns_and_starts(app_dir: Path) -> None:
    result = run_command("--check-config", "-b", "127.0.0.1:0", "myapp:Hello", cwd=app_dir,
                         env={"PREFORK_WORKRS": "3"})  # fmt: skip
    assert result.returncode == 0, result
    assert result.stderr == (
        "prefork: warning: PREFORK_WORKRS is not a setting, ignored;"
        " did you mean PREFORK_WORKERS?\n"
    )


# -- 5: --help, --print-config, --check-config -------------------------------------------------


def test_help_shows_defaults_and_the_timeout_rule(app_dir: Path) -> None:
    text = " ".join(run_command("--help", cwd=app_dir).stdout.split())
    assert "(default: 127.0.0.1:8000)" in text
    assert "idle. (default: 4)" in text
    assert "(default: 0o022)" in text
    assert "30 s + 30 s with the defaults" in text


def test_print_config_shows_modes_in_octal(app_dir: Path) -> None:
    result = run_command("--print-config", "--unix-socket-mode", "660", cwd=app_dir)
    assert '"umask": "0o022"' in result.stdout
    assert '"unix_socket_mode": "0o660"' in result.stdout


def test_check_config_tries_the_binds(app_dir: Path) -> None:
    sock_path = app_dir / "check.sock"
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    good = run_command("--check-config", "-b", f"127.0.0.1:{port}", "-b", f"unix:{sock_path}",
                       "myapp:Hello", cwd=app_dir)  # fmt: skip
    assert good.returncode == 0, good
    assert good.stdout == (
        f"prefork: the configuration is valid: myapp:Hello loads as a http-handler application,"
        f" and 127.0.0.1:{port}, unix:{sock_path} can be bound.\n"
    )
    assert not sock_path.exists()
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        busy = run_command("--check-config", "-b", f"127.0.0.1:{port}", "myapp:Hello",
                           cwd=app_dir)  # fmt: skip
    assert busy.returncode == 2
    assert busy.stderr == f"prefork: cannot bind 127.0.0.1:{port}: Address already in use\n"


# -- 6: app default, serving line, exit line, Unix socket files --------------------------------


def test_serving_line_exit_line_and_socket_file_removal(
    app_dir: Path, start_command: Callable[..., CommandProcess]
) -> None:
    (app_dir / "wsgiapp.py").write_text(WORKS)
    sock_path = app_dir / "app.sock"
    server = start_command("-w", 1, "-b", "127.0.0.1:0", "-b", f"unix:{sock_path}",
                           "--wsgi", "wsgiapp", binds=2)  # fmt: skip
    port = server.address[1]
    assert server.wait_for_line(r"master \d+: serving (.*) with 1 worker")[0][1] == (
        f"127.0.0.1:{port}, unix:{sock_path}"
    )
    server.wait_for_line(READY)
    assert http_get(server.address, "/") == "ok"
    assert sock_path.exists()
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    server.wait_for_line(rf"master {server.pid} exiting \(graceful stop\)$")
    assert not sock_path.exists()


def test_handler_mode_needs_the_object_name(app_dir: Path) -> None:
    result = run_command("myapp", cwd=app_dir)
    assert result.returncode == 2
    assert "expected MODULE:OBJECT (only --wsgi takes MODULE alone" in result.stderr


def test_the_socket_file_of_another_process_is_left_alone(app_dir: Path, launched) -> None:
    sock_path = app_dir / "shared.sock"
    server = launch(launched, app_dir, "-w", 1, "-b", f"unix:{sock_path}", "myapp:Hello")
    server.wait_for_line(READY)
    sock_path.unlink()  # someone else takes the path over while prefork runs
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(sock_path))
        server.send(signal.SIGTERM)
        assert server.wait_exit() == 0
        assert sock_path.exists()
