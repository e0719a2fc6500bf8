"""Graceful stop (``TERM``): requests in flight and in the listen backlog are answered."""

from __future__ import annotations

import contextlib
import http.client
import signal
import threading
import time

import pytest

from .harness import (
    EXITED,
    READY,
    parse_pid_body,
    pid_gone,
    process_group_members,
    unused_socket_connect_refused,
    wait_until,
)


@pytest.mark.timeout(60)
def test_term_lets_a_slow_request_finish_then_everything_is_gone(start_server):
    server = start_server("--kind", "http", "--workers", 2, "--threads", 4)
    server.wait_for_line(READY, count=2)
    workers = server.wait_for_workers(2)

    result: dict[str, object] = {}

    def slow_request() -> None:
        conn = http.client.HTTPConnection(*server.address, timeout=20)
        try:
            conn.request("GET", "/sleep?s=2")
            response = conn.getresponse()
            result["status"] = response.status
            result["body"] = response.read().decode()
            result["answered_at"] = time.monotonic()
        except Exception as exc:
            result["error"] = repr(exc)
        finally:
            conn.close()

    client = threading.Thread(target=slow_request, name="slow-request")
    client.start()
    try:
        sleeping = server.wait_for_line(r"pid=(\d+) app INFO request /sleep\?s=2: sleeping")[0]
        serving_pid = int(sleeping[1])
        server.send(signal.SIGTERM)
        code = server.wait_exit(timeout=20)
        exited_at = time.monotonic()
    except BaseException:
        server.close()  # so that the client is not left waiting for its timeout
        raise
    finally:
        client.join(25)
    assert not client.is_alive()
    assert "error" not in result, result
    assert result["status"] == 200, result
    assert parse_pid_body(str(result["body"]))[0] == serving_pid
    assert code == 0, server.tail()
    assert float(result["answered_at"]) <= exited_at  # type: ignore[arg-type]
    exits = server.find(EXITED)
    assert {int(m["pid"]) for m in exits} == workers
    assert {m["how"] for m in exits} == {"exit code 0"}
    assert all(pid_gone(pid) for pid in workers)
    assert not process_group_members(server.pid)
    assert unused_socket_connect_refused(server.address)


@pytest.mark.timeout(60)
def test_term_answers_every_connection_waiting_in_the_listen_backlog(start_server):
    server = start_server("--kind", "http", "--workers", 1, "--threads", 1)
    server.wait_for_line(READY)
    (worker,) = server.wait_for_workers(1)
    conns = [http.client.HTTPConnection(*server.address, timeout=20) for _ in range(11)]
    try:
        # The only thread is busy: the worker stops accepting...
        conns[0].request("GET", "/sleep?s=1")
        server.wait_for_line(r"request /sleep\?s=1: sleeping")
        # ...so these wait in the kernel's listen backlog (connect() has completed).
        for conn in conns[1:]:
            conn.request("GET", "/pid")
        server.send(signal.SIGTERM)
        answers = []
        for conn in conns:
            response = conn.getresponse()
            answers.append((response.status, response.read().decode()))
        assert [status for status, _ in answers] == [200] * len(conns), answers
        assert {parse_pid_body(body)[0] for _, body in answers} == {worker}
    finally:
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()
    assert server.wait_exit(timeout=20) == 0, server.tail()
    wait_until(lambda: pid_gone(worker), message="the worker to exit")
    assert unused_socket_connect_refused(server.address)
