"""Reload, upgrade and stop under load, through the ``prefork`` command: no request lost."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from engine.harness import (
    EXITED,
    READY,
    LoadGenerator,
    parse_pid_body,
    pid_gone,
    process_group_members,
    unused_socket_connect_refused,
    wait_until,
)

from .helpers import (
    collect_answers,
    fill_then_queue,
    generation_line,
    logged_since,
    seconds,
    spread,
    time_of_day,
    wait_timed,
)

WORKERS = 2
THREADS = 4
LOAD = "8 HTTP clients (4 keep-alive, 4 fresh), 2 workers x 4 threads, `prefork` command"


def read_pid(pidfile: Path) -> int | None:
    with contextlib.suppress(FileNotFoundError, ValueError):
        return int(pidfile.read_text())
    return None


@pytest.mark.timeout(300)
def test_hup_20_times_under_load_loses_no_request(start_command, app_dir: Path, figures) -> None:
    rounds = 20
    pidfile = app_dir / "prefork.pid"
    command = start_command("-w", WORKERS, "--threads", THREADS, "-b", "127.0.0.1:0",
                            "-p", pidfile, "faultapp:Hello")  # fmt: skip
    command.wait_for_line(READY, count=WORKERS)
    master = read_pid(pidfile)
    assert master == command.pid
    load = LoadGenerator(command.address, keepalive_clients=4, fresh_clients=4).start()
    ready_times, drained_times = [], []
    try:
        load.wait_for_successes(200)
        for generation in range(2, rounds + 2):
            mark = command.mark()
            sent_tod = time_of_day()
            os.kill(master, signal.SIGHUP)
            ready = wait_timed(
                command, generation_line(READY, generation), count=WORKERS, since=mark
            )
            exits = wait_timed(
                command, generation_line(EXITED, generation - 1), count=WORKERS, since=mark
            )
            assert [m["how"] for m, _ in exits] == ["exit code 0"] * WORKERS, exits
            ready_times.append(max(logged_since(sent_tod, m.string) for m, _ in ready))
            drained_times.append(max(logged_since(sent_tod, m.string) for m, _ in exits))
            new = {int(m["pid"]) for m, _ in ready}
            load.wait_for_answer_from(new)
            load.wait_for_successes(50)
    finally:
        load.stop()
    print(load.report())
    assert command.wait_for_workers(WORKERS) == new

    figures.fault = f"reload (`HUP`) {rounds} times in a row, each once the last one is done"
    figures.load = LOAD
    figures.count_load(load)
    figures.recovery_s = max(drained_times)
    figures.recovery = (
        f"HUP -> new generation ready: {spread(ready_times)}; old generation gone:"
        f" {spread(drained_times)}"
    )
    figures.bound = "0 failed; every old worker exits with code 0"
    assert not load.failures, load.report()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_usr2_then_term_of_the_old_master_5_times_loses_no_request(
    start_command, app_dir: Path, figures
) -> None:
    rounds = 5
    pidfile = app_dir / "prefork.pid"
    command = start_command("-w", WORKERS, "--threads", THREADS, "-b", "127.0.0.1:0",
                            "-p", pidfile, "faultapp:Hello")  # fmt: skip
    command.wait_for_line(READY, count=WORKERS)
    old = read_pid(pidfile)
    assert old == command.pid
    load = LoadGenerator(command.address, keepalive_clients=4, fresh_clients=4).start()
    upgrade_times, handover_times = [], []
    masters = [old]
    try:
        load.wait_for_successes(200)
        for _ in range(rounds):
            old_workers = {child.pid for child in psutil.Process(old).children()}
            mark = command.mark()
            sent_tod = time_of_day()
            os.kill(old, signal.SIGUSR2)
            started = command.wait_for_line(
                rf"\[{old}\] .*upgrade: started a new master, pid (\d+)", since=mark
            )[0]
            new = int(started[1])
            ready = wait_timed(command, rf"\[{new}\] .*{READY}", count=WORKERS, since=mark)
            upgrade_times.append(max(logged_since(sent_tod, m.string) for m, _ in ready))
            wait_until(lambda new=new: read_pid(pidfile) == new, message="the new pidfile")
            assert read_pid(Path(f"{pidfile}.oldbin")) == old
            new_workers = {int(m["pid"]) for m, _ in ready}
            load.wait_for_answer_from(new_workers)
            term_at = time.monotonic()
            os.kill(old, signal.SIGTERM)
            wait_until(
                lambda old=old, gone=old_workers: pid_gone(old) and all(map(pid_gone, gone)),
                message=f"the old master {old} and its workers to exit",
                describe=command.describe,
            )
            handover_times.append(time.monotonic() - term_at)
            assert not Path(f"{pidfile}.oldbin").exists()
            assert read_pid(pidfile) == new
            assert {child.pid for child in psutil.Process(new).children()} == new_workers
            masters.append(new)
            old = new
            load.wait_for_successes(200)
    finally:
        load.stop()
    print(load.report())
    # Every master answered in turn; the last one stops cleanly and removes its pidfile.
    answered_by = {pid for pid, _ in load.seen()}
    assert answered_by >= new_workers
    os.kill(old, signal.SIGTERM)
    wait_until(lambda: pid_gone(old), message="the last master to exit", describe=command.describe)
    wait_until(lambda: not pidfile.exists(), message="the pidfile removed")
    wait_until(lambda: not process_group_members(command.pid), message="nothing left running")

    figures.fault = f"upgrade (`USR2`, then `TERM` to the old master) {rounds} times"
    figures.load = LOAD
    figures.count_load(load)
    figures.recovery_s = max(upgrade_times)
    figures.recovery = (
        f"USR2 -> new master's workers ready: {spread(upgrade_times)}; TERM -> old master"
        f" and workers gone: {spread(handover_times)}"
    )
    figures.bound = "0 failed; the pidfile names each new master; nothing left"
    figures.note(f"masters in turn: {', '.join(map(str, masters))}")
    assert not load.failures, load.report()


@pytest.mark.timeout(120)
def test_term_serves_every_connection_waiting_in_the_listen_backlog(start_server, figures) -> None:
    """2 workers x 2 threads busy with slow requests, 60 more waiting in the backlog: TERM."""
    busy_count, waiting_count = 4, 60
    server = start_server("--kind", "http", "--workers", 2, "--threads", 2,
                          "--graceful-timeout", 20)  # fmt: skip
    server.wait_for_line(READY, count=2)
    workers = server.wait_for_workers(2)
    conns = fill_then_queue(server, busy_count, waiting_count)
    try:
        term_at = time.monotonic()
        server.send(signal.SIGTERM)
        answers, errors = collect_answers(conns)
    finally:
        for conn in conns:
            conn.close()
    code = server.wait_exit(timeout=30)
    stopped_in = time.monotonic() - term_at

    figures.fault = (
        f"graceful stop (`TERM`) with {waiting_count} connections in the listen backlog"
    )
    figures.load = f"{busy_count} slow requests in flight + {waiting_count} waiting, 2 workers x 2"
    figures.count(len(conns), len(errors) + sum(status != 200 for status, _ in answers))
    figures.recovery_s = stopped_in
    figures.recovery = f"TERM -> master exited (code {code}): {seconds(stopped_in)}"
    figures.bound = "every connection answered 200, none reset; exit 0; nothing left"
    assert not errors, errors
    assert [status for status, _ in answers] == [200] * len(conns), answers
    assert {parse_pid_body(body)[0] for _, body in answers} <= workers
    assert code == 0, server.tail()
    assert {m["how"] for m in server.find(EXITED)} == {"exit code 0"}
    assert not process_group_members(server.pid)
    assert unused_socket_connect_refused(server.address)
