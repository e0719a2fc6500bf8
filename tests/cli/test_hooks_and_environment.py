"""Server hooks from the config file, ``--chdir``, ``-e KEY=VALUE`` and the ``--reuse-port``
warning, through the real command."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import textwrap
from pathlib import Path

import pytest
from engine.harness import http_get, wait_until

from .harness import CommandProcess, run_command

HOOKS_CONFIG = """
import json
import os

bind = "127.0.0.1:0"
workers = 2
threads = 1
graceful_timeout = 5

RECORD = os.environ["HOOK_RECORD"]


def _record(name, server, worker=None):
    entry = {"hook": name, "pid": os.getpid(), "workers": server.workers if server else None}
    if worker is not None:
        entry["worker_pid"] = worker.pid
        entry["generation"] = worker.generation
    with open(RECORD, "a") as file:
        file.write(json.dumps(entry) + "\\n")


def on_starting(server):
    _record("on_starting", server)


def when_ready(server):
    _record("when_ready", server)


def pre_fork(server, worker):
    _record("pre_fork", server, worker)


def post_fork(server, worker):
    import myapp  # not imported yet: post_fork runs before the application loads

    _record("post_fork", server, worker)


def post_worker_init(worker):
    _record("post_worker_init", None, worker)


def worker_exit(server, worker):
    _record("worker_exit", server, worker)


def on_reload(server):
    _record("on_reload", server)


def on_exit(server):
    _record("on_exit", server)
"""

ENV_APP = """
import os


def application(environ, start_response):
    body = f"{os.environ.get('GREETING', '-')} {os.environ.get('TARGET', '-')}".encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


def read_record(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_python_config_file_hooks_run_where_and_when_gunicorns_do(
    start_command, app_dir: Path
) -> None:
    (app_dir / "prefork.conf.py").write_text(textwrap.dedent(HOOKS_CONFIG))
    record = app_dir / "record.jsonl"
    command = start_command(
        "-c", "prefork.conf.py", "myapp:Hello", env={"HOOK_RECORD": str(record)}
    )
    first = command.wait_for_workers(2)
    wait_until(lambda: len(command.ready_workers(generation=1)) == 2, message="2 ready workers")
    command.send(signal.SIGHUP)
    wait_until(lambda: len(command.ready_workers(generation=2)) == 2, message="generation 2")
    wait_until(lambda: not (command.worker_pids() & first), message="generation 1 gone")
    second = command.worker_pids()
    command.send(signal.SIGTERM)
    assert command.wait_exit() == 0

    entries = read_record(record)
    hooks = [entry["hook"] for entry in entries]
    master = command.pid
    assert hooks[0] == "on_starting" and hooks[-1] == "on_exit", hooks
    assert hooks.count("when_ready") == 1 and hooks.count("on_reload") == 1
    for entry in entries:
        in_master = entry["hook"] not in ("post_fork", "post_worker_init", "worker_exit")
        assert (entry["pid"] == master) is in_master, entry
    workers = first | second
    forked = {e["worker_pid"] for e in entries if e["hook"] == "post_fork"}
    assert forked == workers == {e["pid"] for e in entries if e["hook"] == "post_fork"}
    assert {e["pid"] for e in entries if e["hook"] == "post_worker_init"} == workers
    assert {e["pid"] for e in entries if e["hook"] == "worker_exit"} == workers
    assert [e["generation"] for e in entries if e["hook"] == "pre_fork"] == [1, 1, 2, 2]
    # on_reload runs before the new generation is forked; the settings came from the file.
    assert hooks.index("on_reload") < hooks.index("pre_fork", hooks.index("on_reload"))
    assert all(e["workers"] == 2 for e in entries if e["workers"] is not None)


HOOKS_MODULE = """
import os

def post_fork(server, worker):
    with open(os.environ["HOOK_RECORD"], "a") as file:
        file.write(f"post_fork {os.getpid()}\\n")

def when_ready(server):
    raise RuntimeError("a bug in a master hook")

def wrong_arguments(server):
    pass
"""


def test_toml_and_environment_name_hooks_as_module_function(start_command, app_dir) -> None:
    (app_dir / "myhooks.py").write_text(textwrap.dedent(HOOKS_MODULE))
    (app_dir / "prefork.toml").write_text('post_fork = "myhooks:post_fork"\nworkers = 1\n')
    record = app_dir / "record.txt"
    command = start_command(
        "-b", "127.0.0.1:0", "myapp:Hello",
        env={"HOOK_RECORD": str(record), "PREFORK_WHEN_READY": "myhooks:when_ready"},
    )  # fmt: skip
    (worker,) = command.wait_for_workers(1)
    # The failing master hook is logged with its traceback; the master serves on.
    command.wait_for_line(r"the when_ready hook \(myhooks:when_ready\) failed")
    command.wait_for_line(r"RuntimeError: a bug in a master hook")
    assert http_get(command.address, "/pid").split()[0] == str(worker)
    wait_until(lambda: record.exists() and record.read_text(), message="post_fork record")
    assert record.read_text() == f"post_fork {worker}\n"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('post_fork = "nosuchmodule:hook"', r"post_fork: expected a function MODULE:NAME; "
         r"cannot import 'nosuchmodule': no such module"),
        ('post_fork = "myhooks:wrong_arguments"', r"post_fork: expected a function taking "
         r"\(server, worker\), not myhooks:wrong_arguments\(server\)"),
        ("on_exit = 3", r"on_exit: expected a function taking \(server\)"),
    ],
)  # fmt: skip
def test_a_bad_hook_is_one_line_and_exit_2(app_dir: Path, config: str, message: str) -> None:
    (app_dir / "myhooks.py").write_text(textwrap.dedent(HOOKS_MODULE))
    (app_dir / "prefork.toml").write_text(config + "\n")
    result = run_command("--check-config", "myapp:Hello", cwd=app_dir)
    assert result.returncode == 2, result
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert re.search(message, result.stderr), result.stderr


def test_python_config_errors_name_the_line_and_typos_get_a_warning(app_dir: Path) -> None:
    config = app_dir / "prefork.conf.py"
    config.write_text("workers = 2\nthreads = undefined_name\n")
    result = run_command("-c", config, "--check-config", "myapp:Hello", cwd=app_dir)
    assert result.returncode == 2
    assert result.stderr == (
        f"prefork: config file {config}, line 2: NameError: name 'undefined_name' is not defined\n"
    )
    config.write_text("import os\nworkrs = 3\nthreads = 2\n\ndef helper():\n    pass\n")
    result = run_command("-c", config, "--print-config", cwd=app_dir)
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        f"prefork: warning: {config}: workrs is not a setting (did you mean workers?)\n"
    )
    assert json.loads(result.stdout)["threads"] == 2


def test_on_starting_failing_stops_the_start_with_exit_2(app_dir: Path) -> None:
    (app_dir / "prefork.conf.py").write_text(
        "bind = '127.0.0.1:0'\n\ndef on_starting(server):\n    raise ValueError('no database')\n"
    )
    result = run_command("myapp:Hello", cwd=app_dir)
    assert result.returncode == 2
    assert result.stderr.endswith(
        "prefork: the on_starting hook failed: ValueError: no database\n"
    ), result.stderr
    assert 'prefork.conf.py", line 4, in on_starting' in result.stderr


def test_chdir_imports_from_there_and_hup_still_finds_the_config(app_dir: Path) -> None:
    project = app_dir / "project"
    project.mkdir()
    (project / "envapp.py").write_text(textwrap.dedent(ENV_APP))
    (app_dir / "conf.toml").write_text('raw_env = ["GREETING=hello"]\n')
    command = CommandProcess(
        "-c", "conf.toml", "--chdir", "project", "-b", "127.0.0.1:0", "-w", "1",
        "--log-file", "server.log", "--wsgi", "envapp:application",
        cwd=app_dir,
    )  # fmt: skip
    try:
        command.launch()
        log = project / "server.log"  # relative paths are from --chdir, as in gunicorn
        wait_until(lambda: log.exists() and "listening on" in log.read_text(), message="log")
        address = log.read_text().split("listening on tcp://")[1].split()[0]
        host, _, port = address.rpartition(":")
        assert http_get((host, int(port)), "/") == "hello -"
        (app_dir / "conf.toml").write_text('raw_env = ["TARGET=world"]\n')
        command.send(signal.SIGHUP)
        # Removed from the config: GREETING is unset for the new workers.
        wait_until(lambda: http_get((host, int(port)), "/") == "- world", message="new env")
        assert "keeping the current settings" not in log.read_text()
    finally:
        command.close()


def test_env_option_takes_key_equals_value(app_dir: Path, start_command) -> None:
    (app_dir / "envapp.py").write_text(textwrap.dedent(ENV_APP))
    command = start_command(
        "-e", "GREETING=hi=there", "--env", "TARGET=", "-b", "127.0.0.1:0", "-w", "1",
        "--wsgi", "envapp:application",
    )  # fmt: skip
    assert http_get(command.address, "/") == "hi=there "
    result = run_command("-e", "NOEQUALS", "--check-config", "myapp:Hello", cwd=app_dir)
    assert result.returncode == 2
    assert "bad value ['NOEQUALS'] for raw_env: expected KEY=VALUE" in result.stderr


def test_reuse_port_warns_when_another_process_holds_the_address(start_command) -> None:
    holder = socket.socket()
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        command = start_command(
            "--reuse-port", "-b", f"127.0.0.1:{port}", "-w", "1", "myapp:Hello"
        )
        (warning,) = command.find(r"another process.* already listens on this address")
        assert f"bind 127.0.0.1:{port}: another process (pid {os.getpid()})" in warning.string
    finally:
        holder.close()
    command.send(signal.SIGTERM)
    assert command.wait_exit() == 0
    # The holder gone, the same address binds without the warning.
    quiet = start_command("--reuse-port", "-b", f"127.0.0.1:{port}", "-w", "1", "myapp:Hello")
    assert not quiet.find("already listens")
