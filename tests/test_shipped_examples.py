"""The examples shipped in ``prefork.examples`` (the README's first command) really serve."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest
from support import TIMEOUT, wait_for


def start_example(module: str) -> subprocess.Popen[str]:
    """Start ``python -m MODULE --port 0`` in its own session."""
    return subprocess.Popen(
        [sys.executable, "-m", module, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


@pytest.fixture
def example(request: pytest.FixtureRequest) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """The running example named by the test's parameter, with its port; always stopped."""
    proc = start_example(request.param)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert match, f"no address in the first line: {line!r}"
        yield proc, int(match.group(1))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(TIMEOUT)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.parametrize("example", ["prefork.examples.hello"], indirect=True)
def test_hello_serves_from_workers_and_stops_on_ctrl_c(
    example: tuple[subprocess.Popen[str], int],
) -> None:
    """The hello server answers from its 2 worker processes and exits 0 on SIGINT."""
    proc, port = example
    master = psutil.Process(proc.pid)
    wait_for(lambda: len(master.children()) == 2, message="2 workers")
    pids = set()
    for _ in range(20):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        conn.request("GET", "/")
        response = conn.getresponse()
        body = response.read().decode()
        conn.close()
        assert response.status == 200
        assert body.startswith("Hello, world!")
        pids.add(int(re.search(r"pid (\d+)", body).group(1)))  # type: ignore[union-attr]
    assert pids <= {child.pid for child in master.children()}
    assert proc.pid not in pids
    workers = master.children()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(TIMEOUT) == 0
    _, alive = psutil.wait_procs(workers, timeout=TIMEOUT)
    assert not alive


@pytest.mark.parametrize("example", ["prefork.examples.echo"], indirect=True)
def test_echo_echoes_lines(example: tuple[subprocess.Popen[str], int]) -> None:
    """The echo server sends each line back."""
    proc, port = example
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"hello\nworld\n")
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    assert received == b"hello\nworld\n"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(TIMEOUT) == 0


def test_readme_command_serves_the_hello_handler(tmp_path) -> None:
    """``prefork -w 2 prefork.examples.hello:HelloHandler`` (the README's first command)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefork", "-w", "2", "-b", "127.0.0.1:0",
         "prefork.examples.hello:HelloHandler"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        port = 0
        for line in proc.stderr:
            if match := re.search(r"listening on tcp://127\.0\.0\.1:(\d+)", line):
                port = int(match.group(1))
                break
        assert port, "the command did not say where it listens"
        master = psutil.Process(proc.pid)
        wait_for(lambda: len(master.children()) == 2, message="2 workers")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        conn.request("GET", "/")
        body = conn.getresponse().read().decode()
        conn.close()
        assert body.startswith("Hello, world! (worker pid ")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(TIMEOUT)
        if proc.stderr is not None:
            proc.stderr.close()
