"""Out of file descriptors: the worker pauses accepting (no busy loop) and recovers."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from engine.harness import EXITED, READY, http_get, parse_pid_body

from .helpers import cpu_seconds, gaps, logged_at, num_fds, seconds, wait_timed

NOFILE = 64
PAUSING = r"worker \d+: accept failed \(Too many open files\); pausing (?P<pause>[\d.]+)s"
#: The pause doubles from 10 ms up to 1 s; two pauses at the cap make the window measured.
AT_THE_CAP = PAUSING.replace(r"(?P<pause>[\d.]+)", r"1\.00")


def probe_http(address: tuple[str, int]) -> tuple[Any, Callable[[], int]]:
    """A request sent now, answered later: returns the connection and a reader."""
    conn = http.client.HTTPConnection(*address, timeout=30)
    conn.request("GET", "/pid")

    def answer() -> int:
        response = conn.getresponse()
        assert response.status == 200
        return parse_pid_body(response.read().decode())[0]

    return conn, answer


def probe_echo(address: tuple[str, int]) -> tuple[Any, Callable[[], int]]:
    """A line sent now, echoed later: returns the socket and a reader."""
    sock = socket.create_connection(address, timeout=30)
    sock.sendall(b"probe\n")

    def answer() -> int:
        reply = sock.recv(100)
        pid, _, line = reply.partition(b" ")
        assert line == b"probe\n", reply
        return int(pid)

    return sock, answer


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("kind", "held_by"),
    [
        # HTTP connections that never send a byte: parked in the worker's selector.
        pytest.param("http", "the worker's selector (silent HTTP connections)", id="http-parked"),
        # Stream connections each held by a handler thread blocked reading.
        pytest.param(
            "tcp-echo",
            "handler threads blocked reading (echo)",
            id="echo-handlers",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_emfile_pauses_accepting_without_spinning_and_recovers(
    start_server, figures, kind: str, held_by: str
) -> None:
    threads = 4 if kind == "http" else 2 * NOFILE  # an echo handler holds its thread
    server = start_server("--kind", kind, "--workers", 1, "--threads", threads,
                          "--header-timeout", 60, nofile=NOFILE)  # fmt: skip
    server.wait_for_line(READY)
    (worker,) = server.wait_for_workers(1)
    spare = NOFILE - num_fds(worker)
    held: list[socket.socket] = []
    probe: Any = None
    try:
        mark = server.mark()
        # More connections than the worker has fds left for: the rest wait in the backlog.
        for _ in range(spare + 16):
            held.append(socket.create_connection(server.address, timeout=10))
        _, exhausted_at = wait_timed(server, PAUSING, since=mark)[0]
        probe, answer = (probe_http if kind == "http" else probe_echo)(server.address)
        cpu_before, window_start = cpu_seconds(worker), time.monotonic()
        server.wait_for_line(AT_THE_CAP, count=2, since=mark, timeout=30)
        cpu_used, window = cpu_seconds(worker) - cpu_before, time.monotonic() - window_start
        assert num_fds(worker) == NOFILE, "the worker is not out of fds"
        pauses = [float(m["pause"]) for m in server.find(PAUSING, since=mark)]
        # Free the fds: the clients hang up; the worker closes its side.
        freed_at = time.monotonic()
        for sock in held:
            sock.close()
        served_by = answer()
        recovered_in = time.monotonic() - freed_at
    finally:
        for sock in held:
            sock.close()
        if probe is not None:
            probe.close()
    assert served_by == worker
    assert server.worker_pids() == {worker}
    assert not server.find(EXITED)
    if kind == "http":
        assert parse_pid_body(http_get(server.address))[0] == worker
    share = cpu_used / window

    figures.fault = f"out of fds (RLIMIT_NOFILE {NOFILE}): accept fails with EMFILE"
    figures.load = f"{len(held)} connections held by {held_by} + 1 probe request, 1 worker"
    figures.count(len(held) + 1, 0)
    figures.recovery_s = recovered_in
    figures.recovery = (
        f"fds freed -> probe answered {seconds(recovered_in)}; worker CPU while exhausted"
        f" {share:.1%} of {seconds(window)}"
    )
    figures.bound = "pauses (log line), recovers, same worker; CPU < 30% of wall time"
    figures.note(
        f"{held_by}: exhausted {seconds(freed_at - exhausted_at)}, pauses"
        f" {', '.join(f'{p:g}' for p in pauses)} s; the held connections are the fault, not"
        " counted as failed"
    )
    assert pauses[:3] == [0.01, 0.02, 0.04], pauses
    assert share < 0.3, (cpu_used, window)
    assert recovered_in < 5.0


@pytest.mark.timeout(120)
def test_emfile_pause_lasts_what_the_worker_announces(start_server, figures) -> None:
    """The worker retries accept after the pause it logs (10 ms, 20 ms...), not a second later."""
    server = start_server("--kind", "http", "--workers", 1, "--threads", 4,
                          "--header-timeout", 60, nofile=NOFILE)  # fmt: skip
    server.wait_for_line(READY)
    (worker,) = server.wait_for_workers(1)
    held: list[socket.socket] = []
    try:
        mark = server.mark()
        for _ in range(NOFILE - num_fds(worker) + 16):
            held.append(socket.create_connection(server.address, timeout=10))
        lines = server.wait_for_line(PAUSING, count=5, since=mark, timeout=30)
    finally:
        for sock in held:
            sock.close()
    pauses = [float(m["pause"]) for m in lines]
    spacing = gaps([logged_at(m.string) for m in lines])
    figures.fault = "out of fds: the accept pause the worker announces vs the one it makes"
    figures.load = f"{len(held)} silent HTTP connections, 1 worker"
    figures.count(len(held), 0)
    figures.recovery = (
        "announced "
        + ", ".join(f"{p:g}" for p in pauses[:-1])
        + " s; made "
        + (", ".join(f"{gap:.2f}" for gap in spacing) + " s")
    )
    figures.bound = "each retry within the announced pause + 0.25 s"
    assert pauses == [0.01, 0.02, 0.04, 0.08, 0.16], pauses
    late = [
        (pause, round(gap, 3))
        for pause, gap in zip(pauses, spacing, strict=False)
        if gap > pause + 0.25
    ]
    assert not late, f"accept retried long after the announced pause (pause, gap): {late}"
