"""Reload (``HUP``) under continuous load: every worker replaced, no request lost."""

from __future__ import annotations

import re
import signal

import pytest

from .harness import (
    EXITED,
    READY,
    RETIRING,
    WorkerCountSampler,
    format_timeline,
    pid_gone,
    serving_timeline,
    workers_alive_timeline,
)

WORKERS = 2
THREADS = 4


def assert_new_generation_ready_before_old_retired(lines: list[str], generation: int) -> None:
    """Each old worker is retired as ``stale`` only after one more new worker is ready."""
    ready = re.compile(READY)
    retiring = re.compile(RETIRING)
    ready_count = retired_count = 0
    for text in lines:
        if (match := ready.search(text)) and int(match["gen"]) == generation:
            ready_count += 1
        elif (match := retiring.search(text)) and int(match["gen"]) < generation:
            assert match["reason"] == "replaced (reload)", text
            retired_count += 1
            assert retired_count <= ready_count, (
                f"an old worker was retired before its replacement was ready: {text}"
            )


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "options",
    [
        pytest.param([], id="plain"),
        pytest.param(["--boot-delay", "1"], id="boot-delay"),
        pytest.param(["--rolling", "--boot-delay", "0.3"], id="rolling"),
    ],
)
def test_hup_twice_replaces_every_worker_without_failed_requests(
    start_server, start_load, options
):
    server = start_server("--kind", "http", "--workers", WORKERS, "--threads", THREADS, *options)
    server.wait_for_line(READY, count=WORKERS)
    originals = server.wait_for_workers(WORKERS)
    load = start_load(server.address, keepalive_clients=4, fresh_clients=4)
    load.wait_for_answer_from(originals)
    load.wait_for_successes(300)

    rolling = "--rolling" in options
    new_pids: set[int] = set()
    with WorkerCountSampler(server) as sampler:
        for generation in (2, 3):
            mark = server.mark()
            server.send(signal.SIGHUP)
            server.wait_for_line(rf"master: reloading, generation {generation}$", since=mark)
            ready = server.wait_for_line(
                READY.replace(r"(?P<gen>\d+)", str(generation)), count=WORKERS, since=mark
            )
            new_pids = {int(match["pid"]) for match in ready}
            exits = server.wait_for_line(
                EXITED.replace(r"(?P<gen>\d+)", str(generation - 1)),
                count=WORKERS,
                since=mark,
                timeout=30,
            )
            assert [match["how"] for match in exits] == ["exit code 0"] * WORKERS, exits
            with server.cond:
                lines = [line.text for line in server.lines[mark:] if line.stream == "err"]
            assert_new_generation_ready_before_old_retired(lines, generation)
            load.wait_for_answer_from(new_pids)
            load.wait_for_successes(300)

    assert server.wait_for_workers(WORKERS) == new_pids
    assert server.ready_workers(generation=3) == dict.fromkeys(new_pids, 3)
    assert all(pid_gone(pid) for pid in originals), "an original worker is still running"
    load.stop()
    print(load.report())
    assert load.successes > 0
    assert not load.failures, load.report()

    # Capacity never dipped: from the first boot on, at least WORKERS workers were
    # serving (ready and not retiring) at every step of the reloads.
    timeline = serving_timeline(server)
    first_full = next(i for i, (count, _) in enumerate(timeline) if count == WORKERS)
    assert min(count for count, _ in timeline[first_full:]) >= WORKERS, format_timeline(timeline)

    if rolling:
        assert sampler.samples > 10
        assert len(sampler.largest) <= WORKERS + 1, (
            f"{len(sampler.largest)} workers running at once during a rolling reload:"
            f" {sorted(sampler.largest)}\n"
            f"{format_timeline(workers_alive_timeline(server))}"
        )
        alive = workers_alive_timeline(server)
        assert max(count for count, _ in alive) <= WORKERS + 1, (
            "the master's log shows more than workers+1 workers during a rolling reload:\n"
            + format_timeline(alive)
        )
