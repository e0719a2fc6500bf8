"""Smoke test of the benchmark harness (``bench/``): ``--quick`` on three cheap cases.

It runs in this process, so the suite's leak guard sees every server and load generator
the harness starts, and checks that each was stopped and reaped.  Only that the harness
works is checked (a table, non-zero requests, no crash), never a timing; the Python load
generator is used for HTTP, so neither ``wrk`` nor any other server needs to be installed
(the TCP echo case uses the C echo generator when a C compiler is there, and the last tests
check that generator against the Python one).
"""

from __future__ import annotations

import json
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import echoload, loadgen  # noqa: E402
from bench import run as bench_run  # noqa: E402

CASES = ("stdlib-threading-http", "prefork-http", "prefork-tcp")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.timeout(90)
def test_quick_run_writes_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "benchmarks.md"
    data = tmp_path / "results.json"
    argv = ["--quick", "--loadgen", "python", "--cases", ",".join(CASES), "--out", str(out),
            "--json", str(data), "--no-plots"]  # fmt: skip

    assert bench_run.main(argv) == 0

    results = json.loads(data.read_text())
    assert set(results["cases"]) == set(CASES)
    for name in CASES:
        entry = results["cases"][name]
        assert entry["status"] == "ok", (name, entry["reason"], entry["failures"])
        (row,) = entry["runs"]
        assert row["requests"] > 0, (name, row)
        assert row["rps"] > 0, (name, row)
        assert _gone(row["pid"]), f"{name}: server {row['pid']} still running"
    report = out.read_text()
    for name in CASES:
        assert f"| `{name}` |" in report
    assert "| case | server | req/s (median) |" in report
    assert "prefork-http" in capsys.readouterr().out


def test_unknown_case_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "benchmarks.md"
    assert bench_run.main(["--quick", "--cases", "no-such-case", "--out", str(out)]) == 2
    assert "no-such-case" in capsys.readouterr().err
    assert not out.exists()


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        if isinstance(self.request, tuple):
            data, sock = self.request
            sock.sendto(data, self.client_address)
            return
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture(params=["tcp", "udp"])
def echo_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """A stdlib threading echo server on 127.0.0.1: ``(mode, port)``."""
    cls = socketserver.ThreadingTCPServer if request.param == "tcp" else socketserver.UDPServer
    server = cls(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield request.param, server.server_address[1]
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


@pytest.fixture(scope="module")
def echoload_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The C echo generator, built once for this module (skipped without a C compiler)."""
    if echoload.compiler() is None:
        pytest.skip("no C compiler")
    binary, why = echoload.build(tmp_path_factory.mktemp("echoload"))
    assert binary is not None, why
    return binary


@pytest.mark.timeout(120)
def test_c_echo_generator_matches_the_python_one(
    echoload_binary: Path, echo_server: tuple[str, int]
) -> None:
    """The C echo generator loads a real echo server and reports like loadgen.py."""
    mode, port = echo_server
    results = {}
    for name, cmd in {
        "c": echoload.command(echoload_binary, mode, port, 4, 0.5, "1"),
        "python": [sys.executable, "-m", "bench.loadgen", mode, "--port", str(port),
                   "--connections", "4", "--duration", "0.5", "--timeout", "1"],
    }.items():  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert done.returncode == 0, (name, done.stderr)
        results[name] = json.loads(done.stdout)
    for name, result in results.items():
        assert set(result) == {"requests", "elapsed", "errors", "hist"}, name
        assert result["requests"] > 0, (name, result)
        assert result["errors"] == {}, (name, result)
        assert sum(result["hist"].values()) == result["requests"], name
        p50 = loadgen.percentile({int(k): v for k, v in result["hist"].items()}, 0.5)
        assert p50 is not None and 0 < p50 < 1.0, (name, p50)


@pytest.mark.timeout(60)
def test_c_echo_generator_counts_a_wrong_answer(echoload_binary: Path) -> None:
    """A server that answers with other bytes is counted as errors, not as round trips."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(0.2)
        port = server.getsockname()[1]
        stop = threading.Event()

        def answer_wrongly() -> None:
            while not stop.is_set():
                try:
                    data, peer = server.recvfrom(65536)
                except TimeoutError:
                    continue
                server.sendto(data.upper(), peer)

        thread = threading.Thread(target=answer_wrongly)
        thread.start()
        try:
            cmd = echoload.command(echoload_binary, "udp", port, 2, 0.3, "1")
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        finally:
            stop.set()
            thread.join(10)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["requests"] > 0
    assert result["errors"].get("status") == result["requests"]


def test_c_echo_generator_refuses_bad_arguments(echoload_binary: Path) -> None:
    for argv in (["tcp"], ["ping", "--port", "1"], ["tcp", "--port", "0"],
                 ["tcp", "--port", "1", "--host", "localhost"]):  # fmt: skip
        done = subprocess.run(
            [str(echoload_binary), *argv], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 2, (argv, done.stdout)
        assert done.stderr.strip(), argv
