"""Every code example of the documentation runs, so the docs cannot lie.

The conventions (shared by every page of docs/):

* Programs are files in docs/examples, shown with ``literalinclude``.  A *server*
  has a module-level ``PORT = <int>`` (or ``SOCKET_PATH = "..."``) line and serves
  under ``if __name__ == "__main__":``.  It is started with that line rewritten to
  port 0 (or a fresh socket path), the port it bound is found on its process tree
  (psutil), its client runs against it, and it is stopped with ``SIGTERM``.  The
  client of ``NAME_server.py`` is ``NAME_client.py`` (or, for a server importing its
  handler ``from OTHER_server``, ``OTHER_client.py``).  What a client or any other
  program prints must equal the ``text`` block shown right after its inclusion, if
  there is one; a program that is neither server nor client must exit 0.
* ``pycon`` blocks run as doctests.
* In ``console`` blocks, each ``$ prefork ...`` line runs with ``--check-config``
  appended, in docs/examples, and must exit 0 (``prefork status`` takes no such
  option and is shown only).
* ``toml`` blocks are read as a prefork config file: a ``pyproject.toml`` when they
  have a ``[tool...]`` table (then ``[tool.prefork]`` is checked), else a
  ``prefork.toml``.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib.util
import inspect
import io
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import docblocks
import psutil
import pytest
from docblocks import DOCS, EXAMPLES, Block
from support import wait_for

import prefork
from prefork.errors import ConfigError
from prefork.ops import config

tomllib = config.tomllib  # the standard library's, or tomli before Python 3.11

RUN_TIMEOUT = 60.0
"""Seconds a client, a program or a command gets to finish."""
START_TIMEOUT = 30.0
"""Seconds a server gets to bind its socket."""
STOP_TIMEOUT = 45.0
"""Seconds a server gets to exit after SIGTERM (a prefork master drains its workers)."""

SERVERS = [p for p in docblocks.example_programs() if docblocks.is_server(p)]
CLIENTS = [p for p in docblocks.example_programs() if docblocks.is_client(p)]
OTHERS = [p for p in docblocks.example_programs() if p not in SERVERS and p not in CLIENTS]


def _ids(blocks: list[Block]) -> list[str]:
    return [block.where for block in blocks]


def _environment() -> dict[str, str]:
    """The test's environment without ``PREFORK_*`` settings, examples importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFORK_")}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(EXAMPLES), str(docblocks.ROOT), env.get("PYTHONPATH")])
    )
    return env


def _rewrite(program: Path, pattern: str, line: str, directory: Path) -> Path:
    """A copy of ``program`` in ``directory`` with its one PORT / SOCKET_PATH line replaced."""
    text = program.read_text()
    regex = docblocks.PORT_LINE if pattern == "PORT" else docblocks.SOCKET_PATH_LINE
    matches = regex.findall(text)
    assert len(matches) == 1, f"{program.name}: expected one {pattern} line, found {matches}"
    copy = directory / program.name
    copy.write_text(regex.sub(lambda _: line, text))
    return copy


def _run(program: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a program to completion (killed after ``RUN_TIMEOUT``), output captured."""
    try:
        return subprocess.run(
            [sys.executable, str(program)],
            cwd=cwd,
            env=_environment(),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{program.name} did not finish within {RUN_TIMEOUT}s; stderr: {exc.stderr}")


def _check_output(program: Path, result: subprocess.CompletedProcess[str]) -> None:
    """The program succeeded and printed what each page shows after including it."""
    assert result.returncode == 0, (
        f"{program.name} exited {result.returncode}\nstdout:\n{result.stdout}\n"
        f"stderr:\n{result.stderr}"
    )
    for include in docblocks.expected_outputs(program):
        assert include.output is not None
        shown = include.output.text.rstrip("\n")
        assert result.stdout.rstrip("\n") == shown, (
            f"{program.name} printed\n{result.stdout}\nwhere {include.output.where} shows\n{shown}"
        )


# -- servers -----------------------------------------------------------------------------------


def _bound_port(process: psutil.Process) -> int | None:
    """The port of the first socket (lowest fd) the server listens or receives on."""
    with contextlib.suppress(psutil.Error):
        sockets = [
            c
            for c in process.net_connections(kind="inet")
            if c.laddr
            and (
                c.status == psutil.CONN_LISTEN
                or (c.type == socket.SOCK_DGRAM and c.status == psutil.CONN_NONE)
            )
        ]
        if sockets:
            return min(sockets, key=lambda c: c.fd).laddr.port
    return None


def _unix_socket_ready(path: str) -> bool:
    """A Unix socket bound at ``path`` is listening (stream) or bound (datagram).

    The file appears at ``bind()``, before ``listen()``: /proc/net/unix tells the two
    apart (flag ``__SO_ACCEPTCON``, 0x10000, on a listening socket).
    """
    stream, accepting = 1, 0x10000
    with open("/proc/net/unix") as table:
        for row in table.read().splitlines()[1:]:
            fields = row.split()  # Num RefCount Protocol Flags Type St Inode [Path]
            if len(fields) == 8 and fields[7] == path:
                return int(fields[4], 16) != stream or bool(int(fields[3], 16) & accepting)
    return False


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _stop(server: subprocess.Popen[bytes], tree: list[psutil.Process]) -> list[str]:
    """SIGTERM the server, wait for it, and kill what is left; returns what was left."""
    problems = []
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            problems.append(f"server did not exit within {STOP_TIMEOUT}s of SIGTERM")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)  # its own session: start_new_session
            server.wait(STOP_TIMEOUT)
    survivors = [p for p in tree if _alive(p)]
    if survivors:
        problems.append(f"processes left after the server exited: {[p.pid for p in survivors]}")
        for process in survivors:
            with contextlib.suppress(psutil.Error):
                process.kill()
    return problems


@contextlib.contextmanager
def _serving(program: Path, directory: Path) -> Iterator[tuple[str, object]]:
    """Start the server example; yield ``("PORT", port)`` or ``("SOCKET_PATH", path)``."""
    text = program.read_text()
    socket_dir = None
    if docblocks.PORT_LINE.search(text):
        copy = _rewrite(program, "PORT", "PORT = 0", directory)
    else:  # a Unix socket: a short path, well under the ~104-byte limit
        socket_dir = tempfile.mkdtemp(prefix="pfdoc-")
        path = os.path.join(socket_dir, "server.sock")
        copy = _rewrite(program, "SOCKET_PATH", f"SOCKET_PATH = {path!r}", directory)
    log = directory / "server.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [sys.executable, str(copy)],
            cwd=directory,
            env=_environment(),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    process = psutil.Process(server.pid)  # not reaped before wait(): cannot vanish
    tree = [process]
    problems: list[str] = []
    try:
        found: dict[str, object] = {}

        def bound() -> bool:
            if server.poll() is not None:
                pytest.fail(f"{program.name} exited {server.returncode}:\n{log.read_text()}")
            if socket_dir is None:
                port = _bound_port(process)
                if port is not None:
                    found["PORT"] = port
            elif _unix_socket_ready(path):
                found["SOCKET_PATH"] = path
            return bool(found)

        wait_for(bound, START_TIMEOUT, f"{program.name} to bind")
        with contextlib.suppress(psutil.Error):
            tree = [process, *process.children(recursive=True)]
        [(name, value)] = found.items()
        yield name, value
        with contextlib.suppress(psutil.Error):  # workers forked since the first look
            tree = [process, *process.children(recursive=True)]
    finally:
        problems = _stop(server, tree)
        if socket_dir is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.rmdir(socket_dir)
    output_text = log.read_text()
    assert not problems, f"{program.name}: {'; '.join(problems)}\n{output_text}"
    assert "Traceback" not in output_text, f"{program.name} logged an error:\n{output_text}"


@pytest.mark.parametrize("server", SERVERS, ids=[p.name for p in SERVERS])
def test_server_example_serves_its_client(server: Path, tmp_path: Path) -> None:
    client = docblocks.client_for(server)
    with _serving(server, tmp_path) as (name, value):
        if client is None:  # nothing to say to it: the socket answers, at least
            if name == "PORT":
                socket.create_connection(("localhost", value), timeout=10).close()
            return
        line = f"PORT = {value}" if name == "PORT" else f"SOCKET_PATH = {value!r}"
        client_dir = tmp_path / "client"
        client_dir.mkdir()
        copy = _rewrite(client, name, line, client_dir)
        result = _run(copy, client_dir)
    _check_output(client, result)


@pytest.mark.parametrize("program", OTHERS, ids=[p.name for p in OTHERS])
def test_other_example_runs(program: Path, tmp_path: Path) -> None:
    _check_output(program, _run(program, tmp_path))


# -- blocks of the pages -----------------------------------------------------------------------

PYCON = docblocks.blocks("pycon")


@pytest.mark.parametrize("block", PYCON, ids=_ids(PYCON))
def test_pycon_block(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    test = doctest.DocTestParser().get_doctest(
        block.text, {"__name__": "__doc__"}, block.where, str(block.page), block.line
    )
    assert test.examples, f"{block.where}: a pycon block without >>> examples"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report = io.StringIO()
    runner.run(test, out=report.write, clear_globs=True)
    assert runner.failures == 0, f"{block.where}:\n{report.getvalue()}"


def _prefork_commands() -> list[tuple[str, list[str]]]:
    """``(page:line, argv)`` of every ``$ prefork ...`` line of the console blocks."""
    commands = []
    for block in docblocks.blocks("console"):
        lines = block.text.splitlines()
        number = 0
        while number < len(lines):
            start, command = number, lines[number]
            while command.endswith("\\") and number + 1 < len(lines):
                number += 1
                command = command[:-1] + " " + lines[number]
            number += 1
            if not command.startswith("$ prefork "):
                continue
            words = shlex.split(command[2:], comments=True)
            for position, word in enumerate(words):  # the prefork part of a pipeline
                if word in ("|", "||", "&&", ";", "&") or word.startswith(">"):
                    words = words[:position]
                    break
            if words[1:2] == ["status"]:
                continue
            commands.append((f"{block.page.name}:{block.line + 1 + start}", words))
    return commands


COMMANDS = _prefork_commands()
UNBINDABLE = re.compile(
    r"prefork: (cannot bind unix:/run/\S+: No such file or directory"
    r"|bind 'fd://\w+': no such socket was passed to prefork)"
)


def _prefork_executable() -> list[str]:
    """The ``prefork`` script of this environment, else ``python -m prefork``."""
    script = Path(sys.executable).with_name("prefork")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "prefork"]


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_console_prefork_command(where: str, argv: list[str]) -> None:
    command = [*_prefork_executable(), *argv[1:], "--check-config"]
    env = _environment()
    env.pop("PYTHONPATH")  # what the command imports, it finds in its working directory
    result = subprocess.run(
        command,
        cwd=EXAMPLES,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    # --check-config loads the application, then tries the binds: an address this machine
    # lacks (a systemd socket name, a directory under /run) is the only failure accepted.
    unbindable = result.returncode == 2 and UNBINDABLE.fullmatch(result.stderr.strip())
    assert result.returncode == 0 or unbindable, (
        f"{where}: `{shlex.join(argv)} --check-config` exited {result.returncode}\n"
        f"{result.stdout}{result.stderr}"
    )


TOML = docblocks.blocks("toml")


@pytest.mark.parametrize("block", TOML, ids=_ids(TOML))
def test_toml_block_is_a_valid_config(block: Block, tmp_path: Path) -> None:
    try:
        document = tomllib.loads(block.text)
    except tomllib.TOMLDecodeError as exc:
        pytest.fail(f"{block.where}: not TOML: {exc}")
    path = tmp_path / ("pyproject.toml" if "tool" in document else "prefork.toml")
    path.write_text(block.text)
    try:
        config.read_config_file(path)
    except ConfigError as exc:
        pytest.fail(f"{block.where}: not a valid prefork config: {exc}")


# -- the pages as a whole ----------------------------------------------------------------------


def test_every_literalinclude_points_to_a_file() -> None:
    missing = [f"{i.where}: {i.target}" for i in docblocks.includes() if not i.path.is_file()]
    assert not missing, f"literalinclude of missing files: {missing}"


def test_every_example_is_shown_on_a_page() -> None:
    shown = {inc.path for inc in docblocks.includes()}
    text = "\n".join(page.read_text() for page in [*docblocks.pages(), *DOCS.glob("*.rst")])
    orphans = []
    for path in sorted(EXAMPLES.iterdir()):
        if path.name == "__pycache__" or path.resolve() in shown:
            continue
        if path.suffix == ".py" or path.name not in text:  # data files may be named only
            orphans.append(path.name)
    assert not orphans, f"files of docs/examples no page shows: {orphans}"


def test_every_client_has_its_server() -> None:
    lonely = [
        client.name
        for client in CLIENTS
        if not any(docblocks.client_for(server) == client for server in SERVERS)
    ]
    assert not lonely, f"clients with no server to run against: {lonely}"


def test_no_unchecked_python_blocks() -> None:
    python = {"python", "py", "python3", "{code-block}", "{code}"}
    unchecked = [
        block.where
        for block in docblocks.blocks()
        if block.kind in python and (block.kind.startswith("py") or "py" in block.argument)
    ]
    assert not unchecked, (
        f"Python blocks the tests cannot run (use a literalinclude of docs/examples, or "
        f"pycon): {unchecked}"
    )


@pytest.mark.skipif(
    not (importlib.util.find_spec("sphinx") and importlib.util.find_spec("myst_parser")),
    reason="sphinx and myst-parser are not installed (pip install -e '.[docs]')",
)
def test_sphinx_build_is_clean(tmp_path: Path) -> None:
    build = ["-b", "html", "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")]
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", *build],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"sphinx-build -W failed:\n{result.stdout}{result.stderr}"
    documented = _inventory(tmp_path / "html" / "objects.inv")
    missing = [name for name in _public_api() if name not in documented]
    assert not missing, f"public API missing from docs/api.rst: {missing}"


def _inventory(path: Path) -> set[str]:
    """The Python objects a Sphinx build documented, from its ``objects.inv``."""
    header_lines = 4  # "# Sphinx inventory version 2", project, version, compression
    compressed = path.read_bytes().split(b"\n", header_lines)[header_lines]
    entries = zlib.decompress(compressed).decode().splitlines()
    return {entry.split()[0] for entry in entries if entry.split()[1].startswith("py:")}


def _public_api() -> list[str]:
    """``prefork.NAME`` of every public class, and of every method it defines with a docstring."""
    names = []
    for name in prefork.__all__:
        names.append(f"prefork.{name}")
        for member, value in vars(getattr(prefork, name)).items():
            if not member.startswith("_") and inspect.isfunction(value) and value.__doc__:
                names.append(f"prefork.{name}.{member}")
    return names
