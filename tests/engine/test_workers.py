"""Supervision of the worker pool: crashes, scaling signals, recycling, crash loops."""

from __future__ import annotations

import http.client
import os
import signal
import time

import pytest

from .harness import (
    EXITED,
    READY,
    RETIRING,
    SPAWNED,
    WorkerCountSampler,
    format_timeline,
    http_get,
    parse_pid_body,
    pid_gone,
    process_group_members,
    serving_timeline,
    wait_until,
)


def worker_line(pattern: str, pid: int) -> str:
    """``pattern`` (READY, EXITED...) for the worker with ``pid`` only."""
    return pattern.replace(r"pid=(?P<pid>\d+)", f"pid=(?P<pid>{pid})")


@pytest.mark.timeout(120)
def test_kill_9_of_a_worker_under_load_loses_at_most_its_in_flight_requests(
    start_server, start_load
):
    threads = 4
    server = start_server("--kind", "http", "--workers", 2, "--threads", threads)
    server.wait_for_line(READY, count=2)
    originals = server.wait_for_workers(2)
    load = start_load(server.address, keepalive_clients=4, fresh_clients=4)
    load.wait_for_answer_from(originals)
    load.wait_for_successes(200)

    victim = min(originals)
    mark = server.mark()
    os.kill(victim, signal.SIGKILL)
    exited = server.wait_for_line(worker_line(EXITED, victim), since=mark)[0]
    assert exited["how"] == "killed by SIGKILL"
    replacement = int(server.wait_for_line(READY, since=mark)[0]["pid"])
    assert replacement not in originals
    assert server.wait_for_workers(2) == (originals - {victim}) | {replacement}
    load.wait_for_answer_from([replacement])
    load.wait_for_successes(100)
    load.stop()
    print(load.report())
    assert len(load.failures) <= threads, load.report()


@pytest.mark.timeout(60)
def test_ttin_adds_and_ttou_removes_a_worker(start_server):
    server = start_server("--kind", "http", "--workers", 2, "--threads", 2)
    server.wait_for_line(READY, count=2)
    server.wait_for_workers(2)
    for expected in (3, 4):
        mark = server.mark()
        server.send(signal.SIGTTIN)
        server.wait_for_line(rf"master: workers {expected}$", since=mark)
        server.wait_for_line(READY, since=mark)
    four = server.wait_for_workers(4)
    assert set(server.ready_workers()) == four

    mark = server.mark()
    server.send(signal.SIGTTOU)
    server.wait_for_line(r"master: workers 3$", since=mark)
    retired = server.wait_for_line(RETIRING, since=mark)[0]
    assert retired["reason"] == "scaling down"
    gone = int(retired["pid"])
    exited = server.wait_for_line(worker_line(EXITED, gone), since=mark)[0]
    assert exited["how"] == "exit code 0"
    assert server.wait_for_workers(3) == four - {gone}
    assert not server.find(SPAWNED, since=mark), "TTOU spawned a worker"
    # Every remaining worker still serves.
    seen = set()
    wait_until(
        lambda: seen.add(parse_pid_body(http_get(server.address))[0]) or seen >= four - {gone},
        message="an answer from each of the 3 workers",
        describe=server.describe,
        interval=0,
    )


@pytest.mark.timeout(60)
def test_winch_stops_every_worker_but_the_master_stays_and_ttin_brings_one_back(start_server):
    server = start_server("--kind", "http", "--workers", 2, "--threads", 2)
    server.wait_for_line(READY, count=2)
    originals = server.wait_for_workers(2)

    mark = server.mark()
    server.send(signal.SIGWINCH)
    exits = server.wait_for_line(EXITED, count=2, since=mark)
    assert {int(match["pid"]) for match in exits} == originals
    assert [match["how"] for match in exits] == ["exit code 0"] * 2
    server.wait_for_workers(0)
    assert server.proc.poll() is None, "the master exited on WINCH"
    assert not server.find(r"SIGWINCH ignored", since=mark)

    # With no worker, a client's connection waits in the listen backlog...
    conn = http.client.HTTPConnection(*server.address, timeout=20)
    try:
        conn.request("GET", "/pid")
        assert not server.find(SPAWNED, since=mark), "a worker was started after WINCH"
        # ...and the worker that TTIN brings back answers it.
        mark = server.mark()
        server.send(signal.SIGTTIN)
        server.wait_for_line(r"master: workers 1$", since=mark)
        ready = int(server.wait_for_line(READY, since=mark)[0]["pid"])
        response = conn.getresponse()
        assert response.status == 200
        assert parse_pid_body(response.read().decode())[0] == ready
    finally:
        conn.close()
    assert server.wait_for_workers(1) == {ready}


@pytest.mark.timeout(120)
def test_max_requests_recycles_workers_without_failed_requests(start_server, start_load):
    server = start_server(
        "--kind", "http", "--workers", 2, "--threads", 4,
        "--max-requests", 20, "--max-requests-jitter", 0,
    )  # fmt: skip
    server.wait_for_line(READY, count=2)
    originals = server.wait_for_workers(2)
    with WorkerCountSampler(server) as sampler:
        load = start_load(server.address, keepalive_clients=2, fresh_clients=2, max_requests=5000)
        load.wait_for_successes(100)
        server.wait_for_line(r"served max_requests; replacing it", count=2)
        wait_until(
            lambda: all(pid_gone(pid) for pid in originals),
            message="the original workers to be recycled",
            describe=server.describe,
        )
        load.wait_for_successes(20)
        load.stop()
    print(load.report())
    assert not load.failures, load.report()
    assert load.stats.slowest < 5, load.report()
    answered_by = {pid for pid, _ in load.seen()}
    assert answered_by - originals, f"no recycled worker answered: {load.report()}"
    recycled = [m for m in server.find(RETIRING) if int(m["pid"]) in originals]
    assert {m["reason"] for m in recycled} == {"replaced (max_requests)"}, recycled
    # At every moment at least one worker was serving (ready and not retiring).
    timeline = serving_timeline(server)
    first = next(i for i, (count, _) in enumerate(timeline) if count)
    assert min(count for count, _ in timeline[first:]) >= 1, format_timeline(timeline)
    assert sampler.samples > 0


@pytest.mark.timeout(60)
def test_crash_loop_makes_the_master_exit_with_one_line_reason(start_server):
    server = start_server(
        "--kind", "http", "--workers", 2, "--crash-on-boot", "--max-boot-failures", 3
    )
    code = server.wait_exit(timeout=30)
    assert code == 1, server.tail()
    server.wait_for_line(r"^prefork: ", timeout=5)
    reasons = server.find(r"^prefork: .*")
    assert len(reasons) == 1, reasons
    assert "boot" in reasons[0][0] and "crash on boot (test)" in reasons[0][0], reasons[0][0]
    assert len(server.find(r"worker \d+ failed to boot")) >= 3
    spawned = [int(match["pid"]) for match in server.find(SPAWNED)]
    assert len(spawned) >= 3
    wait_until(
        lambda: all(pid_gone(pid) for pid in spawned) and not process_group_members(server.pid),
        message="no process of the crashed server left",
        describe=server.describe,
    )


@pytest.mark.timeout(60)
def test_workers_finish_their_requests_then_exit_when_the_master_is_killed(start_server):
    """As gunicorn's: an orphaned worker serves what it holds, accepts nothing new, exits."""
    server = start_server("--kind", "http", "--workers", 2, "--threads", 2)
    server.wait_for_line(READY, count=2)
    workers = server.wait_for_workers(2)
    # One worker is busy with a 3 s request and the other holds an idle connection.
    busy = http.client.HTTPConnection(*server.address, timeout=20)
    idle = http.client.HTTPConnection(*server.address, timeout=20)
    late = http.client.HTTPConnection(*server.address, timeout=20)
    try:
        idle.request("GET", "/pid")
        idle.getresponse().read()
        busy.request("GET", "/sleep?s=3")
        server.wait_for_line(r"request /sleep\?s=3: sleeping")
        killed_at = time.monotonic()
        os.kill(server.pid, signal.SIGKILL)
        assert server.wait_exit() == -signal.SIGKILL
        server.wait_for_line(r"master is gone; finishing", count=2)
        # A connection made now waits in the backlog; no orphan takes it.
        late.request("GET", "/pid")
        response = busy.getresponse()
        assert response.status == 200
        assert parse_pid_body(response.read().decode())[0] in workers
        assert 2.5 < time.monotonic() - killed_at < 10
        wait_until(
            lambda: all(pid_gone(pid) for pid in workers),
            timeout=10,
            message=f"workers {sorted(workers)} to exit after the master was killed",
            describe=server.describe,
        )
        assert not process_group_members(server.pid)
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            late.getresponse()
    finally:
        # The orphans are not our children: the harness SIGKILLs the server's process
        # group (its own session) on the way out, whatever happened here.
        for conn in (busy, idle, late):
            conn.close()


@pytest.mark.timeout(60)
def test_an_exception_in_a_handler_does_not_take_the_worker_down(start_server):
    server = start_server("--kind", "http", "--workers", 1, "--threads", 2)
    server.wait_for_line(READY)
    (worker,) = server.wait_for_workers(1)
    conn = http.client.HTTPConnection(*server.address, timeout=10)
    try:
        conn.request("GET", "/boom")
        with pytest.raises(http.client.RemoteDisconnected):
            conn.getresponse()
    finally:
        conn.close()
    server.wait_for_line(r"RuntimeError: boom \(test\)")
    assert parse_pid_body(http_get(server.address)) == (worker, 1)
    assert server.worker_pids() == {worker}
    assert not server.find(EXITED)


@pytest.mark.timeout(60)
def test_usr1_logs_the_reopen_in_the_new_log_file(start_server, tmp_path):
    log = tmp_path / "server.log"
    server = start_server("--kind", "http", "--workers", 1, "--log-file", log)
    server.wait_for_line(READY)
    log.rename(tmp_path / "server.log.1")  # what logrotate does before it sends USR1
    server.send(signal.SIGUSR1)
    server.wait_for_line(r"master: reopened 1 log file\(s\)")
    wait_until(
        lambda: log.exists() and "master: reopened 1 log file(s)" in log.read_text(),
        message="the reopen line in the new log file",
        describe=server.describe,
    )
