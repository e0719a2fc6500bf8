"""Stuck workers: retired, replaced at once, stacks dumped, then killed."""

from __future__ import annotations

import http.client
import re
import threading

import pytest

from .harness import EXITED, READY, RETIRING, SPAWNED, STACK_DUMP, pid_gone, wait_until

THREADS = 4


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("path", "reason", "frame"),
    [
        # The request never returns; the worker's own loop is healthy.
        pytest.param("/hang", r"a request has run for", "do_GET", id="hang"),
        # The request holds the GIL: the worker's loop cannot even write its heartbeat.
        pytest.param(
            "/burn",
            r"a request has run for|no heartbeat for",
            "burn_holding_the_gil",
            id="burn-holding-the-gil",
        ),
    ],
)
def test_stuck_worker_is_retired_dumped_killed_and_replaced(
    start_server, start_load, path, reason, frame
):
    server = start_server(
        "--kind", "http", "--workers", 2, "--threads", THREADS,
        "--worker-timeout", 2, "--graceful-timeout", 1,
    )  # fmt: skip
    server.wait_for_line(READY, count=2)
    originals = server.wait_for_workers(2)
    load = start_load(server.address, keepalive_clients=2, fresh_clients=2)
    load.wait_for_answer_from(originals)

    stuck_result: dict[str, str] = {}

    def stuck_request() -> None:
        conn = http.client.HTTPConnection(*server.address, timeout=30)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            stuck_result["answer"] = f"{response.status} {response.read()!r}"
        except Exception as exc:
            stuck_result["error"] = repr(exc)
        finally:
            conn.close()

    client = threading.Thread(target=stuck_request, name="stuck-request")
    client.start()
    try:
        started = server.wait_for_line(rf"pid=(\d+) app WARNING request {re.escape(path)}:")[0]
        stuck = int(started[1])
        answered_before = load.successes
        retired = server.wait_for_line(
            RETIRING.replace(r"pid=(?P<pid>\d+)", f"pid=(?P<pid>{stuck})"), timeout=15
        )[0]
        answered_while_stuck = load.successes - answered_before
        assert re.match(reason, retired["reason"]), retired[0]
        mark = server.mark()
        exited = server.wait_for_line(
            EXITED.replace(r"pid=(?P<pid>\d+)", f"pid=(?P<pid>{stuck})"), since=mark, timeout=15
        )[0]
        # The third worker ever ready: the replacement, started as soon as it was retired.
        replacement = int(server.wait_for_line(READY, count=3, timeout=15)[-1]["pid"])
    except BaseException:
        server.close()  # so that the stuck client is not left waiting for its timeout
        raise
    finally:
        client.join(35)
    assert not client.is_alive()
    assert "answer" not in stuck_result, stuck_result

    # Replaced: two workers again, the stuck one gone.
    workers = server.wait_for_workers(2)
    assert stuck not in workers
    assert replacement in workers and replacement not in originals
    # It did not stop by itself: the master killed it after the grace period (the
    # stack-dump signal or SIGKILL), or the worker gave up on its requests.
    killed = server.find(rf"master: killing <worker \d+ pid={stuck} ", since=0)
    assert (
        exited["how"].startswith("killed by SIG")
        or killed
        or server.find(r"request\(s\) still running after graceful_timeout")
    ), exited[0]
    # Its threads' stacks were written to stderr, the stuck frame among them.
    wait_until(
        lambda: server.find(STACK_DUMP) and server.find(rf'File ".*app\.py", line \d+ in {frame}'),
        timeout=10,
        message="the stuck worker's stack dump on stderr",
        describe=server.describe,
    )
    # The other worker kept answering meanwhile, and still does.
    assert answered_while_stuck > 0, load.report()
    load.wait_for_answer_from([replacement])
    load.wait_for_successes(50)
    load.stop()
    print(load.report())
    if path == "/hang":
        assert not load.failures, load.report()
    else:
        # Requests the GIL-holding worker had already taken starve with it.
        assert len(load.failures) <= THREADS - 1, load.report()


@pytest.mark.timeout(60)
def test_worker_that_does_not_boot_within_worker_timeout_is_retired_and_replaced(start_server):
    server = start_server(
        "--kind", "http", "--workers", 1, "--boot-delay", 60,
        "--worker-timeout", 1, "--graceful-timeout", 1,
    )  # fmt: skip
    first = int(server.wait_for_line(SPAWNED)[0]["pid"])
    retired = server.wait_for_line(
        RETIRING.replace(r"pid=(?P<pid>\d+)", f"pid=(?P<pid>{first})"), timeout=15
    )[0]
    assert retired["reason"].startswith("did not boot within"), retired[0]
    server.wait_for_line(EXITED.replace(r"pid=(?P<pid>\d+)", f"pid=(?P<pid>{first})"), timeout=15)
    assert pid_gone(first)
    # A replacement is started (it boots slowly too: the harness kills it at the end).
    second = int(server.wait_for_line(SPAWNED, count=2, timeout=15)[1]["pid"])
    assert second != first
    assert server.proc.poll() is None, "the master died"
