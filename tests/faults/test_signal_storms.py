"""Signal storms under load: the master ends with the right workers, no zombie, no fd leaked."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from engine.harness import (
    EXITED,
    READY,
    SPAWNED,
    LoadGenerator,
    ServerProcess,
    parse_pid_body,
    pid_gone,
    process_group_members,
    wait_until,
)

from .helpers import (
    collect_answers,
    fd_table,
    fill_then_queue,
    generation_line,
    http_server_under_load,
    num_fds,
    seconds,
    wait_for_fd_count,
    zombie_children,
)

WORKERS = 2
THREADS = 4
LOAD = "8 HTTP clients (4 keep-alive, 4 fresh), 2 workers x 4 threads"
RELOADING = r"master: reloading, generation (\d+)$"


def master_fds_at_rest(server: ServerProcess, master: int) -> int:
    """The master's fd count once its pool is complete (two equal readings in a row)."""
    readings: list[int] = []

    def stable() -> bool:
        readings.append(num_fds(master))
        return len(readings) > 1 and readings[-1] == readings[-2]

    wait_until(stable, 10, "a stable fd count in the master", interval=0.05)
    return readings[-1]


def wait_for_pool(
    server: ServerProcess, master: int, count: int, generation: int, other: int = 0
) -> set[int]:
    """Wait until the master's children (but ``other``, a new master it started) are
    exactly ``count`` ready workers of ``generation`` (every other worker reaped, no
    zombie); return their pids."""
    found: list[set[int]] = []

    def settled() -> bool:
        children = {child.pid for child in psutil.Process(master).children()} - {other}
        ready = set(server.ready_workers(generation=generation))
        if len(children) == count and children <= ready and not zombie_children(master):
            found.append(children)
            return True
        return False

    wait_until(settled, 30, f"{count} ready workers of generation {generation}", server.describe)
    return found[-1]


def check_afterwards(
    server: ServerProcess, master: int, load: LoadGenerator, fds_before: int, figures
) -> None:
    load.wait_for_successes(100)
    load.stop()
    print(load.report())
    figures.count_load(load)
    assert not load.failures, load.report()
    assert not zombie_children(master)
    wait_for_fd_count(master, fds_before)
    assert num_fds(master) == fds_before, fd_table(master)


def serving_under_load(
    start_server: Any, start_load: Any
) -> tuple[ServerProcess, LoadGenerator, int]:
    """A server of WORKERS x THREADS answering 8 clients from every worker: the server, the
    load, and the master's fd count at rest before the storm."""
    server, _, load = http_server_under_load(start_server, start_load, WORKERS, THREADS)
    return server, load, master_fds_at_rest(server, server.pid)


def send_paced(
    server: ServerProcess, master: int, signals: list[signal.Signals], mark: int
) -> None:
    """Send each signal as soon as the master has taken the previous one of its kind, so
    that none merges with a pending one (the kernel keeps one pending signal per kind)."""
    for sig in signals:
        taken = len(server.find(rf"master: received {sig.name}$", since=mark))
        os.kill(master, sig)
        server.wait_for_line(rf"master: received {sig.name}$", count=taken + 1, since=mark)


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "paced",
    [
        pytest.param(False, id="burst", marks=pytest.mark.slow),
        pytest.param(True, id="paced", marks=pytest.mark.slow),
    ],
)
def test_100_hups_in_a_row(start_server, start_load, figures, paced: bool) -> None:
    storm = 100
    server, load, fds_before = serving_under_load(start_server, start_load)
    master = server.pid

    mark = server.mark()
    if paced:
        send_paced(server, master, [signal.SIGHUP] * storm, mark)
    else:
        for _ in range(storm):
            os.kill(master, signal.SIGHUP)
    last_sent = time.monotonic()
    # A different signal after the storm: the master acts on signals in number order, so
    # once it logs USR1 it has acted on every HUP that reached it (a burst merges).
    os.kill(master, signal.SIGUSR1)
    server.wait_for_line(r"master: received SIGUSR1", since=mark)
    received = len(server.find(r"master: received SIGHUP", since=mark))
    generation = int(server.find(RELOADING, since=mark)[-1][1])
    assert generation == 1 + received, (generation, received)
    if paced:
        assert received == storm
    final = wait_for_pool(server, master, WORKERS, generation)
    settled_in = time.monotonic() - last_sent
    load.wait_for_answer_from(final)
    # Every worker ever started (the originals, any of the intermediate generations) is gone.
    spawned = {int(m["pid"]) for m in server.find(SPAWNED)}
    assert all(pid_gone(pid) for pid in spawned - final)
    assert server.worker_pids() == final
    check_afterwards(server, master, load, fds_before, figures)

    how = "each as soon as the master took the last" if paced else "in a burst"
    figures.fault = f"signal storm: {storm} `HUP`s in a row, {how}"
    figures.load = LOAD
    figures.recovery_s = settled_in
    figures.recovery = f"last HUP -> {WORKERS} workers of the last generation, rest reaped: " + (
        seconds(settled_in)
    )
    figures.bound = "0 failed; 2 workers; 0 zombies; master fds as before"
    merged = "" if paced else " (the kernel merges a signal sent while one is pending)"
    figures.note(
        f"the master acted on {received} HUP(s){merged}, ending at generation {generation};"
        f" {len(spawned)} workers started in all; master fds {fds_before} before and after"
    )


@pytest.mark.timeout(180)
def test_ttin_10_then_ttou_10(start_server, start_load, figures) -> None:
    storm = 10
    server, load, fds_before = serving_under_load(start_server, start_load)
    master = server.pid

    mark = server.mark()
    # Paced, so that the count is exact; the new workers are still booting when the first
    # TTOU arrives.
    send_paced(server, master, [signal.SIGTTIN] * storm + [signal.SIGTTOU] * storm, mark)
    last_sent = time.monotonic()
    # "received" is logged before the master acts: wait for its word on the last one.
    server.wait_for_line(r"master: workers \d+$", count=2 * storm, since=mark)
    targets = [int(m[1]) for m in server.find(r"master: workers (\d+)$", since=mark)]
    assert targets == [*range(3, 3 + storm), *range(storm + 1, 1, -1)], targets
    final = wait_for_pool(server, master, WORKERS, 1)
    settled_in = time.monotonic() - last_sent
    load.wait_for_answer_from(final)
    spawned = {int(m["pid"]) for m in server.find(SPAWNED)}
    assert len(spawned) >= WORKERS + storm
    assert all(pid_gone(pid) for pid in spawned - final)
    exits = server.wait_for_line(EXITED, count=len(spawned) - WORKERS, since=mark)
    assert len(server.find(EXITED, since=mark)) == len(exits), server.tail()
    check_afterwards(server, master, load, fds_before, figures)

    figures.fault = f"signal storm: `TTIN` x{storm} then `TTOU` x{storm}"
    figures.load = LOAD
    figures.recovery_s = settled_in
    figures.recovery = (
        f"last TTOU -> back to {WORKERS} workers, rest reaped: {seconds(settled_in)}"
    )
    figures.bound = "0 failed; 2 workers; 0 zombies; master fds as before"
    how = sorted({m["how"] for m in exits})
    figures.note(
        f"{len(spawned)} workers ran in all, {len(exits)} stopped again ({', '.join(how)});"
        f" master fds {fds_before} before and after"
    )


@pytest.mark.timeout(180)
def test_hup_during_usr2(start_command, app_dir: Path, figures) -> None:
    pidfile = app_dir / "prefork.pid"
    command = start_command("-w", WORKERS, "--threads", THREADS, "-b", "127.0.0.1:0",
                            "-p", pidfile, "faultapp:Hello")  # fmt: skip
    command.wait_for_line(READY, count=WORKERS)
    old = command.pid
    old_workers = command.wait_for_workers(WORKERS)
    load = LoadGenerator(command.address, keepalive_clients=4, fresh_clients=4).start()
    try:
        load.wait_for_answer_from(old_workers)
        load.wait_for_successes(200)
        fds_before = master_fds_at_rest(command, old)

        mark = command.mark()
        os.kill(old, signal.SIGUSR2)
        os.kill(old, signal.SIGHUP)
        sent_at = time.monotonic()
        new = int(
            command.wait_for_line(rf"\[{old}\] .*upgrade: started a new master, pid (\d+)")[0][1]
        )
        # The old master reloads its own workers while the new one boots...
        reloaded = wait_for_pool(command, old, WORKERS, 2, other=new)
        assert not reloaded & old_workers
        # ...and the new master starts its own.
        ready = command.wait_for_line(rf"\[{new}\] .*{READY}", count=WORKERS, since=mark)
        new_workers = {int(m["pid"]) for m in ready}
        wait_until(lambda: pidfile.read_text().strip() == str(new), message="the new pidfile")
        load.wait_for_answer_from(new_workers | reloaded)
        assert not zombie_children(old)
        wait_for_fd_count(old, fds_before)
        os.kill(old, signal.SIGTERM)
        wait_until(
            lambda: pid_gone(old) and all(map(pid_gone, reloaded | old_workers)),
            message="the old master and its workers to exit",
            describe=command.describe,
        )
        settled_in = time.monotonic() - sent_at
        assert {child.pid for child in psutil.Process(new).children()} == new_workers
        load.wait_for_answer_from(new_workers)
        check_afterwards(command, new, load, fds_before, figures)
    finally:
        load.stop()
    os.kill(new, signal.SIGTERM)
    wait_until(lambda: pid_gone(new), message="the new master to exit")
    wait_until(lambda: not process_group_members(command.pid), message="nothing left running")

    figures.fault = "signal storm: `HUP` during `USR2` (to the old master), then `TERM` it"
    figures.load = LOAD + ", `prefork` command"
    figures.recovery_s = settled_in
    figures.recovery = f"USR2+HUP -> old master gone, new one serving: {seconds(settled_in)}"
    figures.bound = "0 failed; 2 workers; 0 zombies; master fds as before (old and new)"
    figures.note(
        f"the old master reloaded (generation 2) while the new one started; fds {fds_before}"
        " in the old master before, in both after"
    )


@pytest.mark.timeout(120)
def test_term_during_hup(start_server, figures) -> None:
    """TERM while a reload's new workers are still booting: what was in flight is served."""
    busy_count, waiting_count = 4, 16
    server = start_server("--kind", "http", "--workers", WORKERS, "--threads", 2,
                          "--boot-delay", 1, "--graceful-timeout", 20)  # fmt: skip
    server.wait_for_line(READY, count=WORKERS)
    workers = server.wait_for_workers(WORKERS)
    conns = fill_then_queue(server, busy_count, waiting_count)
    try:
        mark = server.mark()
        server.send(signal.SIGHUP)
        # The new generation is booting (post_fork takes 1 s): TERM now.
        server.wait_for_line(generation_line(SPAWNED, 2), since=mark)
        sent_at = time.monotonic()
        server.send(signal.SIGTERM)
        answers, errors = collect_answers(conns)
    finally:
        for conn in conns:
            conn.close()
    code = server.wait_exit(timeout=30)
    stopped_in = time.monotonic() - sent_at

    figures.fault = "signal storm: `TERM` during `HUP` (new workers still booting)"
    figures.load = f"{busy_count} slow requests in flight + {waiting_count} in the backlog, 2 x 2"
    figures.count(len(conns), len(errors) + sum(status != 200 for status, _ in answers))
    figures.recovery_s = stopped_in
    figures.recovery = (
        f"TERM -> master exited (code {code}), 0 workers left: {seconds(stopped_in)}"
    )
    figures.bound = "every request answered 200; exit 0; 0 workers, nothing left"
    assert not errors, errors
    assert [status for status, _ in answers] == [200] * len(conns), answers
    assert {parse_pid_body(body)[0] for _, body in answers} <= workers
    assert code == 0, server.tail()
    exits = {int(m["pid"]): m["how"] for m in server.find(EXITED)}
    assert {exits.get(pid) for pid in workers} == {"exit code 0"}, exits
    booting = {int(m["pid"]) for m in server.find(generation_line(SPAWNED, 2))}
    assert booting and booting <= set(exits), (booting, exits)
    assert not process_group_members(server.pid)
    figures.note(
        "the reload's booting workers ended " + ", ".join(sorted({exits[pid] for pid in booting}))
    )
