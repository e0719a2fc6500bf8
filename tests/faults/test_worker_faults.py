"""Faults in one worker under load: killed, stuck, raising, crashing at boot, leaking memory."""

from __future__ import annotations

import collections
import http.client
import itertools
import os
import re
import signal
import statistics
import threading
import time

import pytest
from engine.harness import (
    EXITED,
    READY,
    RETIRING,
    SPAWNED,
    LoadGenerator,
    http_get,
    parse_pid_body,
    pid_gone,
    process_group_members,
    wait_until,
)

from .helpers import (
    fd_table,
    gaps,
    http_server_under_load,
    logged_at,
    logged_since,
    occurrences,
    seconds,
    spread,
    time_of_day,
    timed_lines,
    wait_timed,
    worker_line,
)

WORKERS = 2
THREADS = 4
LOAD = "8 HTTP clients (4 keep-alive, 4 fresh), 2 workers x 4 threads"

#: Kill -> replacement ready, from the master's own log timestamps.  On the 2-core
#: machine running the whole suite with -n auto (load average ~10) it is 7-80 ms; with
#: the machine oversubscribed further (three suites at once, load average ~16) one
#: replacement in dozens of runs took 1.05 s to boot, starved of CPU.  So 1 s is
#: asserted on the median of the rounds, and every round must be within 5 s.
REPLACED_WITHIN = 1.0
REPLACED_WITHIN_STARVED = 5.0


#: How a request cut off by a dying worker fails on the client's side.
CUT_OFF = r"Reset|Disconnected|BrokenPipe|Aborted|IncompleteRead"


def socket_inodes(pid: int) -> set[str]:
    """The sockets ``pid`` has open (``socket:[inode]``)."""
    return {target for target in fd_table(pid).values() if target.startswith("socket:")}


def client_connections(worker: int, master: int) -> int:
    """The client connections ``worker`` holds: its sockets but those it shares with the
    master (the listener).  Quick, unlike parsing /proc/net/tcp, which a load test fills
    with thousands of connections in TIME_WAIT."""
    return len(socket_inodes(worker) - socket_inodes(master))


@pytest.mark.timeout(120)
def test_kill_9_of_a_worker_loses_at_most_its_in_flight_requests(
    start_server, start_load, figures
) -> None:
    """Five rounds: SIGKILL a serving worker; measure kill -> its replacement's ready line."""
    rounds = 5
    server, workers, load = http_server_under_load(start_server, start_load, WORKERS, THREADS)

    recoveries: list[float] = []
    windows: list[tuple[float, float]] = []
    held: list[int] = []
    for _ in range(rounds):
        victim = min(workers)
        mark = server.mark()
        # Frozen first, so that the connections it holds are exactly those it has when
        # it dies: its in-flight requests are among them.
        os.kill(victim, signal.SIGSTOP)
        held.append(client_connections(victim, server.pid))
        killed_at, killed_tod = time.monotonic(), time_of_day()
        os.kill(victim, signal.SIGKILL)
        exited = server.wait_for_line(worker_line(EXITED, victim), since=mark)[0]
        assert exited["how"] == "killed by SIGKILL", exited[0]
        match, ready_at = wait_timed(server, READY, since=mark)[0]
        replacement = int(match["pid"])
        recoveries.append(logged_since(killed_tod, match.string))
        windows.append((killed_at - load.started_at, ready_at - load.started_at))
        now = server.wait_for_workers(WORKERS)
        assert now == (workers - {victim}) | {replacement}, (victim, workers, now)
        workers = now
        load.wait_for_answer_from([replacement])
        load.wait_for_successes(100)
    load.stop()
    print(load.report())

    figures.fault = f"`kill -9` of a worker, {rounds} times"
    figures.load = LOAD
    figures.count_load(load)
    figures.recovery_s = max(recoveries)
    figures.recovery = f"kill -> replacement ready: {spread(recoveries)}"
    figures.bound = (
        "failed <= client connections the victim held, only at a kill;"
        f" replaced: median < {REPLACED_WITHIN:g} s, each < {REPLACED_WITHIN_STARVED:g} s"
    )
    figures.note(f"client connections the victim held at each kill: {held}")
    # At most the victim's in-flight requests fail: no more than the client connections
    # it held, and none except right at a kill (a keep-alive request caught on a
    # connection the victim held is retried by the client, as real clients do).
    per_kill = [0] * rounds
    for failure in load.failures:
        # The last kill before it (a failure is seen a moment after the kill that caused it).
        kill = max((n for n, (start, _) in enumerate(windows) if start - 0.05 <= failure.at),
                   default=None)  # fmt: skip
        assert kill is not None and failure.at <= windows[kill][1] + 2.0, (
            f"a request failed away from any kill: {failure}; kills at {windows}"
        )
        assert re.search(CUT_OFF, failure.error), failure
        per_kill[kill] += 1
    # Kills can follow each other within 50 ms, and a client may see a reset after the next
    # kill began: counted by time, a failure can land one kill late, never early. So the
    # bound holds for every prefix: what failed up to a kill <= what the victims held so far.
    failed_so_far = list(itertools.accumulate(per_kill))
    held_so_far = list(itertools.accumulate(held))
    assert all(f <= h for f, h in zip(failed_so_far, held_so_far, strict=True)), (
        per_kill,
        held,
        load.report(),
    )
    assert statistics.median(recoveries) < REPLACED_WITHIN, recoveries
    assert max(recoveries) < REPLACED_WITHIN_STARVED, recoveries
    if max(recoveries) >= REPLACED_WITHIN:
        figures.note(f"a replacement took {seconds(max(recoveries))}: over 1 s on this run")


class StuckWindowProbe:
    """New connections, one after another, while a worker is stuck: who answers them.

    The load's own clients cannot show it: each has a request in flight, and all of
    them may be waiting inside the stuck worker when it freezes.  A connection opened
    after the freeze can only be accepted by a worker that still runs.  Each probe
    gives up after :attr:`patience` seconds, so one that raced into the stuck worker
    before it froze costs a moment, not the window.
    """

    patience = 0.5

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.answers: collections.Counter[int] = collections.Counter()
        self.answered_by: list[int] = []  # pids in the order they answered
        self.errors: list[str] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="stuck-window-probe")

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.done.set()
        if self.thread.ident is not None:
            self.thread.join(self.patience + 10)

    def _run(self) -> None:
        while not self.done.is_set() and len(self.errors) < 1000:
            try:
                pid, _ = parse_pid_body(http_get(self.address, timeout=self.patience))
            except (OSError, http.client.HTTPException, AssertionError) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            else:
                self.answers[pid] += 1
                self.answered_by.append(pid)

    def report(self) -> str:
        return f"answers by pid: {dict(self.answers)}; errors: {self.errors[:5]}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("path", "what"),
    [
        pytest.param("/hang", "a handler that hangs forever", id="hang"),
        pytest.param("/burn", "a handler burning CPU holding the GIL", id="burn"),
    ],
)
def test_stuck_handler_worker_is_killed_after_worker_timeout_others_keep_answering(
    start_server, start_load, figures, path, what
) -> None:
    timeout, grace = 2.0, 1.0
    server = start_server(
        "--kind", "http", "--workers", WORKERS, "--threads", THREADS,
        "--worker-timeout", timeout, "--graceful-timeout", grace,
    )  # fmt: skip
    server.wait_for_line(READY, count=WORKERS)
    originals = server.wait_for_workers(WORKERS)
    load = start_load(server.address, keepalive_clients=2, fresh_clients=2)
    load.wait_for_answer_from(originals)
    load.wait_for_successes(100)

    outcome: dict[str, str] = {}

    def stuck_request() -> None:
        conn = http.client.HTTPConnection(*server.address, timeout=30)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            outcome["answer"] = f"{response.status} {response.read()!r}"
        except Exception as exc:
            outcome["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()

    client = threading.Thread(target=stuck_request, name="stuck-request")
    client.start()
    probe = StuckWindowProbe(server.address)
    try:
        match = server.wait_for_line(rf"pid=(\d+) app WARNING request {re.escape(path)}:")[0]
        stuck, stuck_tod = int(match[1]), logged_at(match.string)
        mark = server.mark()
        probe.start()
        retired = server.wait_for_line(worker_line(RETIRING, stuck), since=mark)[0]
        probe.stop()
        exited, exited_at = wait_timed(server, worker_line(EXITED, stuck), since=mark)[0]
        ready = server.wait_for_line(READY, since=mark)[0]
    except BaseException:
        server.close()  # the stuck client is not left waiting for its timeout
        raise
    finally:
        probe.stop()
        client.join(35)
    assert not client.is_alive()
    assert "answer" not in outcome, outcome
    replacement = int(ready["pid"])
    assert server.wait_for_workers(WORKERS) == (originals - {stuck}) | {replacement}
    load.wait_for_answer_from([replacement])
    load.wait_for_successes(50)
    load.stop()
    print(load.report())
    print(probe.report())

    figures.fault = f"{what} (`{path}`), worker_timeout {timeout:g} s, graceful {grace:g} s"
    figures.load = "4 HTTP clients (2 keep-alive, 2 fresh), 2 workers x 4 threads"
    figures.count_load(load)
    # From the servers' own timestamps: the stuck request's start to each step.
    retired_in, ready_in, exited_in = (
        logged_since(stuck_tod, line.string) for line in (retired, ready, exited)
    )
    figures.recovery_s = ready_in
    figures.recovery = (
        f"stuck -> retired {seconds(retired_in)}, replacement ready {seconds(ready_in)},"
        f" killed {seconds(exited_in)}"
    )
    figures.note(f"{what}: retired because {retired['reason']}; {exited['how']}")
    by_others = sum(n for pid, n in probe.answers.items() if pid != stuck)
    figures.note(f"{by_others} new connections answered by the other worker while it was stuck")
    figures.count(1, 0)  # the stuck request itself: cut off by design, not a failure

    assert by_others > 0, probe.report()
    assert not [e for e in probe.errors if e.startswith("AssertionError")], probe.report()
    if path == "/burn":
        # Frozen: it cannot even accept, so new connections go elsewhere. It logs the
        # request just before the burn begins, so in that instant the probe's first
        # connection or two may still reach it; none after.
        late = [i for i, pid in enumerate(probe.answered_by) if pid == stuck and i >= 3]
        assert not late, f"stuck worker answered probe #{late}; {probe.report()}"
    assert retired_in >= timeout - 0.002, "retired before worker_timeout"
    assert ready_in < timeout + 5.0
    assert exited_in < timeout + grace + 5.0
    # It did not go on by itself: the master killed it after the grace period (the
    # stack-dump signal, then SIGKILL), or it gave up on its stuck request at the same
    # deadline and exited.
    assert (
        exited["how"].startswith("killed by SIG")
        or server.find(rf"master: killing <worker \d+ pid={stuck} ")
        or server.find(rf"pid={stuck} .*request\(s\) still running after graceful_timeout")
    ), exited[0]
    if path == "/hang":
        figures.bound = "0 failed; retired after worker_timeout; replaced"
        assert not load.failures, load.report()
    else:
        # Requests this worker had taken when the burn froze all its threads die with
        # it (at most its other threads' worth), at the moment it is killed; none other.
        figures.bound = f"failed <= {THREADS - 1}, only those frozen in the stuck worker"
        assert len(load.failures) <= THREADS - 1, load.report()
        killed_at = exited_at - load.started_at
        for failure in load.failures:
            assert killed_at - 1.0 <= failure.at <= killed_at + 2.0, (
                f"{failure} is not at the stuck worker's death ({killed_at:.3f})"
            )
        if load.failures:
            figures.note(
                f"{len(load.failures)} request(s) frozen inside the GIL-holding worker failed"
                " when it was killed"
            )


HANDLE_ERROR = r"Exception occurred during processing of request from"


@pytest.mark.timeout(120)
def test_a_handler_raising_on_every_request_leaves_the_workers_up(
    start_server, start_load, figures
) -> None:
    boom_requests = 300
    server = start_server("--kind", "http", "--workers", WORKERS, "--threads", THREADS)
    server.wait_for_line(READY, count=WORKERS)
    workers = server.wait_for_workers(WORKERS)
    good = start_load(server.address, keepalive_clients=2, fresh_clients=2)
    good.wait_for_answer_from(workers)
    boom = start_load(
        server.address, keepalive_clients=2, fresh_clients=2, path="/boom",
        max_requests=boom_requests,
    )  # fmt: skip
    wait_until(
        lambda: len(boom.failures) + boom.successes >= boom_requests,
        60,
        f"{boom_requests} /boom requests",
        boom.report,
    )
    boom.stop()
    sent = boom.successes + len(boom.failures)  # a few more than asked: clients race the count
    # handle_error logged each one (the standard library's: a line and the traceback).
    for logged in (HANDLE_ERROR, r"RuntimeError: boom \(test\)"):
        wait_until(
            lambda logged=logged: occurrences(server, logged) >= sent,
            message=f"{sent} times {logged!r} in the output",
            describe=lambda logged=logged: f"{occurrences(server, logged)} so far",
        )
    good.wait_for_successes(100)
    good.stop()
    print(boom.report())
    print(good.report())

    figures.fault = "a handler raising on every request (`/boom`)"
    figures.load = "4 clients on /boom + 4 on /pid (2 keep-alive, 2 fresh each), 2 workers x 4"
    figures.count_load(good)
    figures.sent += sent
    figures.recovery = "none needed: 0 worker restarts"
    figures.bound = "every /boom closed or 5xx, logged; same worker pids; 0 other failures"
    figures.note(
        f"all {sent} /boom requests got a closed connection, each logged by handle_error;"
        " they are not counted as failed"
    )
    assert boom.successes == 0
    assert occurrences(server, HANDLE_ERROR) == sent
    for failure in boom.failures:
        assert re.search(r"RemoteDisconnected|Reset|BrokenPipe|status 5\d\d", failure.error), (
            failure
        )
    assert not good.failures, good.report()
    assert server.worker_pids() == workers
    assert not server.find(EXITED)
    assert not server.find(r"Exception occurred", stream="out")
    assert parse_pid_body(http_get(server.address))[0] in workers


@pytest.mark.timeout(120)
def test_a_worker_crashing_at_boot_is_respawned_with_backoff_then_the_master_gives_up(
    start_server, figures
) -> None:
    limit = 6
    server = start_server(
        "--kind", "http", "--workers", 1, "--crash-on-boot", "--max-boot-failures", limit
    )
    # A client is waiting in the listen backlog the whole time: it must get an error when
    # the master gives up, not hang.
    waiting = http.client.HTTPConnection(*server.address, timeout=30)
    try:
        waiting.request("GET", "/pid")
        code = server.wait_exit(timeout=60)
        exited_at = time.monotonic()
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            waiting.getresponse()
    finally:
        waiting.close()
    assert code == 1, server.tail()
    server.wait_for_line(r"^prefork: ", timeout=5)
    reasons = server.find(r"^prefork: .*")
    assert len(reasons) == 1, reasons
    assert f"failed to boot {limit} times in a row" in reasons[0][0], reasons[0][0]
    assert "crash on boot (test)" in reasons[0][0], reasons[0][0]

    spawns = timed_lines(server, SPAWNED)
    assert len(spawns) == limit, [m[0] for m, _ in spawns]
    spawned = [int(m["pid"]) for m, _ in spawns]
    # The spacing of the spawns, from the master's own timestamps.  A spawn follows the
    # previous worker's boot and failure (their time is noisy on a loaded machine: 0.6 s
    # has been seen) and then the backoff the master announced: each gap is at least that
    # backoff, and the wait from a failure to the next spawn is that backoff.
    retries = server.find(r"failed to boot \(.*\); retrying in ([\d.]+)s")
    backoffs = [float(m[1]) for m in retries]
    assert backoffs == [0.1 * 2**n for n in range(limit - 1)], backoffs
    spawned_at = [logged_at(m.string) for m, _ in spawns]
    spacing = gaps(spawned_at)
    assert all(gap >= backoff - 0.002 for gap, backoff in zip(spacing, backoffs, strict=True)), (
        spacing,
        backoffs,
    )
    waits = [
        gaps([logged_at(retry.string), spawn])[0]
        for retry, spawn in zip(retries, spawned_at[1:], strict=True)
    ]
    # The master respawns when the backoff is over (give or take a starved moment), so
    # the waits follow the backoff's doubling.
    assert all(
        backoff - 0.002 <= wait < backoff + 1.0
        for wait, backoff in zip(waits, backoffs, strict=True)
    ), (waits, backoffs)
    assert waits[-1] > waits[0], waits
    wait_until(
        lambda: all(pid_gone(pid) for pid in spawned) and not process_group_members(server.pid),
        message="no process of the crashed server left",
        describe=server.describe,
    )
    first_spawn_at = spawns[0][1]

    figures.fault = f"a worker crashing at boot (`post_fork` raises), max_boot_failures {limit}"
    figures.load = "1 client waiting in the listen backlog, 1 worker"
    figures.count(1, 1)
    figures.recovery = (
        f"gives up (exit 1) {seconds(exited_at - first_spawn_at)} after the first spawn;"
        f" spawn spacing {', '.join(f'{gap:.2f}' for gap in spacing)} s (failure -> respawn"
        f" {', '.join(f'{wait:.2f}' for wait in waits)} s)"
    )
    figures.recovery_s = exited_at - first_spawn_at
    figures.bound = "gaps >= backoff, which doubles; exit != 0 with the reason; nothing left"
    figures.note(
        "the waiting client gets a reset when the master gives up (counted as failed: no"
        " worker ever booted)"
    )


MEMORY_LIMIT_MB = 48


@pytest.mark.timeout(120)
def test_a_worker_over_max_worker_memory_is_recycled_gracefully_under_load(
    start_command, figures
) -> None:
    limit = f"{MEMORY_LIMIT_MB}M"
    command = start_command("-w", WORKERS, "--threads", THREADS, "-b", "127.0.0.1:0",
                            "--max-worker-memory", limit, "faultapp:Hello")  # fmt: skip
    workers = {int(m["pid"]) for m in command.wait_for_line(READY, count=WORKERS)}
    load = LoadGenerator(command.address, keepalive_clients=4, fresh_clients=4).start()
    try:
        load.wait_for_answer_from(workers)
        load.wait_for_successes(200)
        mark = command.mark()
        grown_tod = time_of_day()
        grown = int(http_get(command.address, "/grow").split()[0])
        over = command.wait_for_line(
            rf"uses (\d+) MiB, over max_worker_memory {MEMORY_LIMIT_MB} MiB", since=mark
        )[0]
        retired = command.wait_for_line(worker_line(RETIRING, grown), since=mark)[0]
        assert retired["reason"] == "replaced (memory)", retired[0]
        ready = command.wait_for_line(READY, since=mark)[0]
        exited = command.wait_for_line(worker_line(EXITED, grown), since=mark)[0]
        assert exited["how"] == "exit code 0", exited[0]
        replacement = int(ready["pid"])
        load.wait_for_answer_from({replacement})
        load.wait_for_successes(200)
    finally:
        load.stop()
    print(load.report())
    assert grown in workers
    assert int(over[1]) >= 64

    figures.fault = f"a worker leaking 64 MiB, --max-worker-memory {MEMORY_LIMIT_MB}M"
    figures.load = LOAD + " (the `prefork` command)"
    figures.count_load(load)
    figures.count(1, 0)
    over_in, ready_in, exited_in = (
        logged_since(grown_tod, line.string) for line in (over, ready, exited)
    )
    figures.recovery_s = ready_in
    figures.recovery = (
        f"grown -> noticed {seconds(over_in)}, replacement ready {seconds(ready_in)},"
        f" old one exited (code 0) {seconds(exited_in)}"
    )
    figures.bound = "0 failed; replaced (memory), exit code 0; noticed within ~1 s check"
    assert not load.failures, load.report()
    assert command.worker_pids() == (workers - {grown}) | {replacement}
    assert over_in < 5.0
    figures.note(f"the leaking worker was at {over[1]} MiB when the master noticed")
