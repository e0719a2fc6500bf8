"""``prefork status``: the pure pieces, then the command against a real master."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from support import slot_view

from prefork.engine.scoreboard import Scoreboard, SlotView, WorkerState, published_path
from prefork.ops import status

DEADLINE = 20.0
RUN_STATUS = "import sys, prefork.ops.status; sys.exit(prefork.ops.status.main(sys.argv[1:]))"


# -- pure functions ---------------------------------------------------------------------------


def test_collect_joins_slots_with_process_statistics() -> None:
    slots = [
        slot_view(1, 200, requests=7, busy=3, threads=4, generation=2),
        slot_view(0, 100, requests=5, busy=1, threads=4, state=WorkerState.DRAINING),
    ]
    stats = {
        100: status.ProcessStats(started=1000.0, rss=10 << 20, uss=6 << 20, cpu_percent=12.5),
        200: status.ProcessStats(started=1030.0, rss=20 << 20, uss=None, cpu_percent=0.0),
    }
    rows = status.collect(slots, stats, now=1060.0)
    assert [row.pid for row in rows] == [100, 200]  # by slot index
    first, second = rows
    assert first.state == "draining"
    assert (first.age, first.busy, first.idle, first.threads) == (60.0, 1, 3, 4)
    assert (first.rss, first.uss, first.cpu_percent) == (10 << 20, 6 << 20, 12.5)
    assert (second.generation, second.age, second.requests, second.idle) == (2, 30.0, 7, 1)
    assert second.uss is None


def test_collect_leaves_unknown_processes_blank() -> None:
    rows = status.collect([slot_view(0, 0, state=WorkerState.BOOTING, threads=0)], {}, now=5.0)
    (row,) = rows
    assert (row.pid, row.state, row.age, row.rss, row.uss, row.cpu_percent) == (
        0,
        "booting",
        None,
        None,
        None,
        None,
    )
    assert (row.busy, row.idle) == (0, 0)


def test_json_has_master_workers_and_totals() -> None:
    stats = {
        100: status.ProcessStats(1000.0, 1000, 600, 10.04),
        200: status.ProcessStats(1000.0, 3000, None, 5.0),
    }
    rows = status.collect(
        [slot_view(0, 100, busy=2, requests=3), slot_view(1, 200, requests=4)], stats, now=1001.5
    )
    document = status.to_json(status.Status(master_pid=99, uptime=12.3456, workers=rows))
    json.dumps(document)  # serialisable as it is
    assert document["master"] == {"pid": 99, "uptime": 12.346}
    assert [w["pid"] for w in document["workers"]] == [100, 200]
    assert set(document["workers"][0]) == {
        "pid",
        "index",
        "generation",
        "state",
        "age",
        "requests",
        "busy",
        "idle",
        "threads",
        "rss",
        "uss",
        "cpu_percent",
    }
    assert document["workers"][0]["cpu_percent"] == 10.0
    assert document["totals"] == {
        "workers": 2,
        "states": {"booting": 0, "ready": 2, "recycle": 0, "draining": 0},
        "requests": 7,
        "busy": 2,
        "idle": 6,
        "threads": 8,
        "rss": 4000,
        "uss": 600,  # what could be read
        "cpu_percent": 15.0,
    }


def test_table_has_a_header_and_a_line_per_worker() -> None:
    stats = {4321: status.ProcessStats(0.0, 25 * 1024 * 1024, None, 3.25)}
    rows = status.collect(
        [slot_view(0, 4321, busy=1, requests=17), slot_view(1, 4322, state=WorkerState.BOOTING)],
        stats,
        now=3725.0,
    )
    text = status.format_status(status.Status(master_pid=4320, uptime=3725.0, workers=rows))
    header, columns, first, second = text.splitlines()
    assert header.startswith("master 4320  up 1h02m  workers 2 (1 booting, 1 ready)")
    assert "threads 1 busy / 7 idle" in header
    assert columns.split() == [
        "PID",
        "IDX",
        "GEN",
        "STATE",
        "AGE",
        "REQUESTS",
        "BUSY",
        "IDLE",
        "RSS",
        "USS",
        "CPU%",
    ]
    assert first.split() == [
        "4321",
        "0",
        "1",
        "ready",
        "1h02m",
        "17",
        "1",
        "3",
        "25.0M",
        "-",
        "3.2",
    ]
    assert second.split()[3:] == ["booting", "-", "0", "0", "4", "-", "-", "-"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0.4, "0s"), (59.9, "59s"), (60, "1m00s"), (3599, "59m59s"), (90061, "1d01h")],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert status.format_duration(seconds) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (None, "-"),
        (0, "0B"),
        (1023, "1023B"),
        (1536, "1.5K"),
        (3 << 30, "3.0G"),
        (5 << 40, "5120.0G"),
    ],
)
def test_format_bytes(size: int | None, text: str) -> None:
    assert status.format_bytes(size) == text


# -- errors -----------------------------------------------------------------------------------


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert status.main(argv) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith("prefork status: "), err
    return err


def test_missing_pidfile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(capsys, ["--pid", str(tmp_path / "nope.pid")])
    assert "no pidfile at" in err


def test_pidfile_without_a_pid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pidfile = tmp_path / "garbage.pid"
    pidfile.write_text("not a pid\n")
    err = one_line_error(capsys, ["--pid", str(pidfile)])
    assert "holds no pid" in err


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=DEADLINE)
    return proc.pid


def test_master_not_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pid = dead_pid()
    pidfile = tmp_path / "stale.pid"
    pidfile.write_text(f"{pid}\n")
    err = one_line_error(capsys, ["--pid", str(pidfile)])
    assert f"master {pid} is not running" in err
    err = one_line_error(capsys, ["--master", str(pid), "--json"])
    assert f"master {pid} is not running" in err


def test_no_published_scoreboard(capsys: pytest.CaptureFixture[str]) -> None:
    # This test process runs, but publishes no scoreboard.
    err = one_line_error(capsys, ["--master", str(os.getpid())])
    assert "publishes no scoreboard" in err


def test_stale_scoreboard_of_an_earlier_process_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = published_path(os.getpid())
    board = Scoreboard(4, path)  # left behind by a master that had this pid before
    try:
        long_ago = psutil.Process().create_time() - 3600
        os.utime(path, (long_ago, long_ago))
        err = one_line_error(capsys, ["--master", str(os.getpid())])
        assert "is stale" in err
    finally:
        board.close()


def test_a_leftover_board_at_the_path_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "prefork-1.scoreboard"
    path.write_bytes(b"\xff" * 10)  # a killed master's file, another size, garbage inside
    with open(path, "rb") as leftover:
        board = Scoreboard(4, str(path))
        try:
            assert os.fstat(leftover.fileno()).st_nlink == 0, "replaced, not reused"
            assert leftover.read() == b"\xff" * 10
            assert board.snapshot() == []
        finally:
            board.close()
    assert not path.exists()


def test_an_unwritable_publish_path_falls_back_to_a_private_board(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from prefork.engine.master import _open_scoreboard

    board = _open_scoreboard(4, str(tmp_path / "missing" / "prefork-1.scoreboard"))
    try:
        assert board.path is None and board.slots == 4
        assert "cannot publish the scoreboard" in caplog.text
    finally:
        board.close()


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert status.main([]) == 2
    assert status.main(["--master", "12", "--pid", "x"]) == 2
    assert status.main(["--master", "12", "--watch", "0"]) == 2
    capsys.readouterr()
    assert status.main(["--help"]) == 0
    assert "--stacks" in capsys.readouterr().out


# -- measuring and signalling processes -------------------------------------------------------


def test_sampler_measures_live_processes_and_skips_gone_ones() -> None:
    sampler = status.ProcessSampler()
    gone = dead_pid()
    stats = sampler.measure([os.getpid(), gone, 0], interval=0.01)
    assert set(stats) == {os.getpid(), gone}
    assert stats[gone] is None
    mine = stats[os.getpid()]
    assert mine is not None
    assert mine.rss is not None and mine.rss > 0
    assert mine.uss is not None and 0 < mine.uss <= mine.rss  # our own process: readable
    assert mine.cpu_percent is not None and mine.cpu_percent >= 0
    assert mine.started == pytest.approx(psutil.Process().create_time())
    # Known now: the next call measures CPU since this one, without waiting.
    started = time.monotonic()
    again = sampler.measure([os.getpid()], interval=60)
    assert time.monotonic() - started < 30
    assert again[os.getpid()] is not None


CHILD_WITH_HANDLER = (
    "import faulthandler, signal, sys\n"
    "faulthandler.register(signal.SIGUSR2, all_threads=True)\n"
    "print('ready', flush=True)\n"
    "sys.stdin.read()\n"
)
CHILD_WITHOUT_HANDLER = "import sys\nprint('ready', flush=True)\nsys.stdin.read()\n"


def test_send_stacks_signals_only_children_that_handle_it() -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for code in (CHILD_WITH_HANDLER, CHILD_WITHOUT_HANDLER)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n"  # its handler is installed
        handles, ignores = procs
        slots = [slot_view(0, handles.pid), slot_view(1, ignores.pid), slot_view(2, 0)]
        # Not the master's children: nothing is sent.
        assert status.send_stacks(dead_pid(), slots, stagger=0) == ([], [handles.pid, ignores.pid])
        # This process as their master: only the one with a handler gets the signal
        # (the other would die of it).
        assert status.send_stacks(os.getpid(), slots, stagger=0) == ([handles.pid], [ignores.pid])
        outputs = [proc.communicate(b"", timeout=DEADLINE) for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0]
        assert re.search(rb"^(Current thread|Thread) 0x[0-9a-f]+", outputs[0][1], re.M)
        assert outputs[1][1] == b""
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=DEADLINE)


# -- against a real master --------------------------------------------------------------------

MASTER_SCRIPT = textwrap.dedent(
    """
    import os
    import sys

    import prefork


    class Echo(prefork.StreamRequestHandler):
        def handle(self):
            for line in self.rfile:
                self.wfile.write(line)


    class Server(prefork.PreforkMixIn, prefork.TCPServer):
        publish_scoreboard = True
        workers = 2
        threads = 2
        graceful_timeout = 5


    pidfile = sys.argv[1]
    with Server(("127.0.0.1", 0), Echo) as server:
        with open(pidfile + ".tmp", "w") as file:
            file.write(f"{os.getpid()}\\n")
        os.replace(pidfile + ".tmp", pidfile)
        print("PORT", server.server_address[1], flush=True)
        server.serve_forever()
    """
)


@dataclass
class RunningMaster:
    proc: subprocess.Popen[bytes]
    pidfile: Path
    stderr: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def workers(self) -> set[int]:
        return {child.pid for child in psutil.Process(self.pid).children()}

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")


def wait_until(predicate: object, message: str, timeout: float = DEADLINE) -> object:
    """Poll ``predicate`` until it returns something true, or fail after ``timeout``."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {message}")
        time.sleep(0.02)


def ready_workers(pid: int) -> list[SlotView]:
    """The READY slots of master ``pid``'s published scoreboard (none if not published yet)."""
    try:
        board = Scoreboard.attach(published_path(pid))
    except (FileNotFoundError, ValueError):
        return []
    try:
        return [view for view in board.snapshot() if view.state == WorkerState.READY]
    finally:
        board.close()


@pytest.fixture
def master(tmp_path: Path) -> Iterator[RunningMaster]:
    """A prefork master with two workers in its own process group; always killed and reaped."""
    script = tmp_path / "master.py"
    script.write_text(MASTER_SCRIPT)
    pidfile = tmp_path / "master.pid"
    stderr_path = tmp_path / "stderr.log"
    with open(stderr_path, "wb") as stderr, open(tmp_path / "stdout.log", "wb") as stdout:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(pidfile)],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    running = RunningMaster(proc, pidfile, stderr_path)
    try:
        wait_until(pidfile.exists, "the pidfile")
        wait_until(
            lambda: len(ready_workers(proc.pid)) == 2 or proc.poll() is not None,
            "two ready workers",
        )
        assert proc.poll() is None, running.log()
        yield running
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()  # a graceful stop removes the published scoreboard
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=DEADLINE)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=DEADLINE)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(published_path(proc.pid))
        print(f"----- master stderr -----\n{running.log()}")


def run_status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", RUN_STATUS, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )


def echo(port: int, line: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(line)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def port_of(master: RunningMaster) -> int:
    text = (master.stderr.parent / "stdout.log").read_text()
    match = re.search(r"^PORT (\d+)$", text, re.M)
    assert match, text
    return int(match.group(1))


def test_json_lists_the_masters_workers(master: RunningMaster) -> None:
    assert echo(port_of(master), b"hello\n") == b"hello\n"

    def served() -> dict[str, object] | None:
        result = run_status("--pid", str(master.pidfile), "--json")
        assert result.returncode == 0, result.stderr
        document: dict[str, object] = json.loads(result.stdout)
        totals = document["totals"]
        assert isinstance(totals, dict)
        return document if totals["requests"] >= 1 else None

    document = wait_until(served, "the request to be counted")
    assert isinstance(document, dict)
    assert document["master"]["pid"] == master.pid
    assert document["master"]["uptime"] >= 0
    workers = document["workers"]
    assert {w["pid"] for w in workers} == master.workers()
    assert len(workers) == 2
    for worker in workers:
        assert worker["state"] == "ready"
        assert worker["generation"] == 1
        assert worker["threads"] == 2
        assert worker["busy"] + worker["idle"] == 2
        assert worker["rss"] > 0
        assert worker["uss"] is not None and 0 < worker["uss"] <= worker["rss"]
        assert worker["cpu_percent"] >= 0
        assert worker["age"] >= 0
    assert document["totals"]["workers"] == 2
    assert document["totals"]["threads"] == 4


def test_table_and_master_pid_option(master: RunningMaster) -> None:
    result = run_status("--master", str(master.pid))
    assert result.returncode == 0, result.stderr
    header, columns, *lines = result.stdout.splitlines()
    assert header.startswith(f"master {master.pid}  up ")
    assert "workers 2 (2 ready)" in header
    assert columns.split()[0] == "PID"
    assert {int(line.split()[0]) for line in lines} == master.workers()


def test_stacks_makes_every_worker_dump_its_threads(master: RunningMaster) -> None:
    workers = master.workers()
    result = run_status("--pid", str(master.pidfile), "--stacks")
    assert result.returncode == 0, result.stderr
    assert all(str(pid) in result.stdout for pid in workers), result.stdout
    assert "SIGUSR2" in result.stdout
    # Each worker's main thread is in its loop: one "_serve" frame per dump.
    wait_until(
        lambda: "Thread 0x" in master.log() and master.log().count("in _serve") >= 2,
        "both workers' stacks in the master's stderr",
    )
    # The workers go on serving: the same two are still there.
    assert master.workers() == workers
    assert echo(port_of(master), b"still here\n") == b"still here\n"


def test_master_gone_after_stop(master: RunningMaster) -> None:
    master.proc.terminate()
    master.proc.wait(timeout=DEADLINE)
    result = run_status("--pid", str(master.pidfile), "--json")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("prefork status: "), result.stderr


def read_line(stream: object, deadline: float) -> str:
    """One line from a pipe, failing at ``deadline`` rather than blocking forever."""
    import selectors

    fileobj = stream
    with selectors.DefaultSelector() as selector:
        selector.register(fileobj, selectors.EVENT_READ)  # type: ignore[arg-type]
        line = b""
        while not line.endswith(b"\n"):
            if not selector.select(max(0.0, deadline - time.monotonic())):
                raise AssertionError(f"no line before the deadline (so far: {line!r})")
            chunk = os.read(fileobj.fileno(), 1)  # type: ignore[attr-defined]
            if not chunk:
                raise AssertionError(f"EOF (so far: {line!r})")
            line += chunk
    return line.decode()


def test_watch_json_prints_a_line_per_refresh_until_interrupted(master: RunningMaster) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            RUN_STATUS,
            "--master",
            str(master.pid),
            "--watch",
            "0.05",
            "--json",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + DEADLINE
        documents = [json.loads(read_line(proc.stdout, deadline)) for _ in range(3)]
        assert all(len(doc["workers"]) == 2 for doc in documents)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=DEADLINE) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=DEADLINE)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
