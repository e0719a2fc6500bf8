"""Slow clients against an http.server handler: slowloris and silent connections
(throughput with and without them), and a client reading its reply a byte a second."""

from __future__ import annotations

import contextlib
import socket
import statistics
import threading
import time
from typing import TypeVar

import pytest
from engine.harness import READY, LoadGenerator, http_get, wait_until

from .helpers import logged_at, seconds, wait_timed

SLOWLORIS = 50
SILENT = 50
TRICKLE_SECONDS = 5
WINDOW = 1.0
HEAD = b"GET /pid HTTP/1.1\r\nHost: slowloris\r\nX-Slow: " + b"a" * 64 + b"\r\n\r\n"


def measure(address: tuple[str, int], duration: float) -> tuple[float, LoadGenerator]:
    """A load run bounded to ``duration`` seconds: (requests per second, the run)."""
    load = LoadGenerator(
        address, keepalive_clients=4, fresh_clients=4, max_duration=duration, max_requests=200_000
    ).start()
    try:
        wait_until(
            lambda: not any(thread.is_alive() for thread in load.threads),
            duration + 20,
            "the bounded load run to end",
        )
        elapsed = time.monotonic() - load.started_at
    finally:
        load.stop()
    print(f"{duration:g}s run: {load.report()}")
    return load.successes / elapsed, load


_Client = TypeVar("_Client", bound="PacedClient")


class PacedClient:
    """A client thread doing one step a second (the pace of the fault itself), stopped and
    joined on leaving the ``with`` block."""

    def __init__(self, name: str) -> None:
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def wait_for_tick(self, started: float, tick: int) -> bool:
        """Wait until second ``tick`` after ``started``; ``True`` if told to stop."""
        # The pace of the fault itself (a byte a second), not a synchronisation.
        return self.stopping.wait(max(0.0, started + tick - time.monotonic()))

    def __enter__(self: _Client) -> _Client:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


class Trickle(PacedClient):
    """Sends each slowloris connection one more byte of its head every second."""

    def __init__(self, socks: list[socket.socket], seconds: int) -> None:
        super().__init__("slowloris")
        self.socks = socks
        self.seconds = seconds
        self.sent = 0
        self.errors: list[str] = []

    def _run(self) -> None:
        started = time.monotonic()
        for tick in range(self.seconds):
            for sock in self.socks:
                try:
                    sock.send(HEAD[tick : tick + 1])
                    self.sent += 1
                except OSError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
            if self.wait_for_tick(started, tick + 1):
                return


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_slowloris_and_silent_connections_leave_full_speed_to_everyone_else(
    start_server, figures
) -> None:
    server = start_server("--kind", "http", "--workers", 2, "--threads", 4,
                          "--header-timeout", 30)  # fmt: skip
    server.wait_for_line(READY, count=2)
    workers = server.wait_for_workers(2)
    # Several short runs each way, compared by their medians: one run slowed down by
    # something else on a shared machine does not decide the figure.
    before = [measure(server.address, WINDOW) for _ in range(2)]

    slow: list[socket.socket] = []
    try:
        for _ in range(SLOWLORIS + SILENT):
            slow.append(socket.create_connection(server.address, timeout=10))
        with Trickle(slow[:SLOWLORIS], TRICKLE_SECONDS) as trickle:
            during = [measure(server.address, WINDOW) for _ in range(TRICKLE_SECONDS - 1)]
            trickled = trickle.sent
        # None of the slow connections was closed by the server: they are parked, not refused.
        for sock in slow:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in slow:
            with contextlib.suppress(OSError):
                sock.close()
    after = [measure(server.address, WINDOW) for _ in range(2)]
    assert server.worker_pids() == workers
    assert http_get(server.address)

    runs = [load for _, load in before + during + after]
    without = [rate for rate, _ in before + after]
    baseline = statistics.median(without)
    with_slow = statistics.median(rate for rate, _ in during)
    ratio = with_slow / baseline
    figures.fault = (
        f"{SLOWLORIS} slowloris connections (a head byte a second for {TRICKLE_SECONDS} s) and"
        f" {SILENT} silent ones"
    )
    figures.load = "8 HTTP clients (4 keep-alive, 4 fresh), 1 s load runs, 2 workers x 4 threads"
    for load in runs:
        figures.count_load(load)
    figures.recovery = (
        f"none needed: {with_slow:.0f} req/s with them vs {baseline:.0f} req/s without"
        f" ({ratio:.0%})"
    )
    figures.bound = "0 failed; with-slow throughput > 50% of without (medians)"
    figures.note(
        "req/s of the 1 s runs without slow clients: "
        + ", ".join(f"{rate:.0f}" for rate in without)
        + "; with them: "
        + ", ".join(f"{rate:.0f}" for rate, _ in during)
        + f"; {trickled} slowloris bytes sent"
    )
    assert not trickle.errors, trickle.errors[:5]
    for load in runs:
        assert not load.failures, load.report()
    assert ratio > 0.5, (without, [rate for rate, _ in during])


class SlowReader(PacedClient):
    """Reads one byte of its reply a second, until the server ends the reply or it is told."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__("slow-reader")
        self.sock = sock
        self.received = 0

    def _run(self) -> None:
        started = time.monotonic()
        tick = 0
        while True:
            try:
                if not self.sock.recv(1):
                    return
            except OSError:
                return
            self.received += 1
            tick += 1
            if self.wait_for_tick(started, tick):
                return


IO_TIMEOUT = 2.0
BIG = 8 << 20


@pytest.mark.timeout(120)
def test_a_client_reading_a_byte_a_second_holds_one_thread_for_at_most_io_timeout(
    start_server, figures
) -> None:
    """1 worker x 2 threads: the slow reader's thread is freed after ``io_timeout``; the
    other thread serves everyone else meanwhile."""
    server = start_server("--kind", "http", "--workers", 1, "--threads", 2,
                          "--io-timeout", IO_TIMEOUT)  # fmt: skip
    server.wait_for_line(READY)
    workers = server.wait_for_workers(1)
    load = LoadGenerator(server.address, keepalive_clients=2, fresh_clients=2).start()
    slow = socket.socket()
    try:
        load.wait_for_successes(50)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
        slow.settimeout(30)
        slow.connect(server.address)
        since = server.mark()
        slow.sendall(f"GET /big?n={BIG} HTTP/1.1\r\nHost: slow-reader\r\n\r\n".encode())
        with SlowReader(slow) as reader:
            ((sending, _),) = wait_timed(server, r".*request /big: sending", since=since)
            answered_before = load.successes
            ((ended, _),) = wait_timed(
                server, r".*request /big: (sent|write failed: \w+)", since=since,
                timeout=IO_TIMEOUT + 30,
            )  # fmt: skip
            answered_during = load.successes - answered_before
        held = logged_at(ended[0]) - logged_at(sending[0])
        load.wait_for_successes(50)
    finally:
        load.stop()
        slow.close()
    assert server.worker_pids() == workers
    figures.fault = (
        f"a client reading its {BIG >> 20} MiB reply a byte a second, io_timeout {IO_TIMEOUT:g} s"
    )
    figures.load = "4 HTTP clients (2 keep-alive, 2 fresh), 1 worker x 2 threads"
    figures.count_load(load)
    figures.recovery_s = held
    figures.recovery = f"reply begun -> write given up, thread free: {seconds(held)}"
    figures.bound = "write given up within io_timeout + 2 s; 0 failed; the other thread serves"
    figures.note(
        f"the slow reader took {reader.received} byte(s) of its reply;"
        f" {answered_during} other requests answered while it held its thread"
    )
    assert ended[1].startswith("write failed"), ended[0]
    assert held <= IO_TIMEOUT + 2.0, held
    assert answered_during > 0, "the other thread answered nobody while one was held"
    assert not load.failures, load.report()
