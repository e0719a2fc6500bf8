"""A pool thread holding its keep-alive connection gives it up when another client needs it.

One worker with one thread and a hold time of 30 s: without the release, a second
client would wait out the whole hold, and a graceful stop would wait for it too.
"""

from __future__ import annotations

import http.client
import http.server
import os
import time
from pathlib import Path

import psutil
import pytest

import prefork
import prefork.engine.worker

from .harness import LOCALHOST, wait_until
from .test_inprocess import PidHandler, serving_in_thread

pytestmark = pytest.mark.skipif(not hasattr(os, "eventfd"), reason="holding needs eventfd")

LONG_HOLD = 30.0


class OneThreadServer(prefork.PreforkMixIn, http.server.HTTPServer):
    workers = 1
    threads = 1
    graceful_timeout = 10.0
    keepalive_timeout = 60.0  # the hold is at most this long too


def _holding(worker: psutil.Process) -> bool:
    """Whether a thread of ``worker`` waits in poll(2): the holder (the loop uses epoll)."""
    for thread in worker.threads():
        wchan = Path(f"/proc/{worker.pid}/task/{thread.id}/wchan")
        try:
            if wchan.read_text().startswith(("poll_schedule_timeout", "do_sys_poll")):
                return True
        except OSError:
            continue
    return False


def _get(conn: http.client.HTTPConnection) -> int:
    conn.request("GET", "/")
    response = conn.getresponse()
    assert response.status == 200
    return int(response.read())


def _first_request_held(conn: http.client.HTTPConnection, before: set[int]) -> psutil.Process:
    """Serve one request on ``conn``, then wait until the only worker's thread holds it."""
    pid = _get(conn)
    (worker,) = [c for c in psutil.Process().children() if c.pid not in before]
    assert worker.pid == pid
    wait_until(lambda: _holding(worker), timeout=10, message="the thread holds")
    return worker


@pytest.fixture
def long_hold(monkeypatch):
    monkeypatch.setattr(prefork.engine.worker, "HOLD_TIME", LONG_HOLD)


@pytest.mark.timeout(60)
def test_a_held_connection_is_released_for_another_client(long_hold):
    before = {child.pid for child in psutil.Process().children()}
    server = OneThreadServer((LOCALHOST, 0), PidHandler)
    address = server.server_address[:2]
    with serving_in_thread(server):
        first = http.client.HTTPConnection(*address, timeout=10)
        second = http.client.HTTPConnection(*address, timeout=10)
        try:
            pid = _first_request_held(first, before).pid
            started = time.monotonic()
            assert _get(second) == pid  # not after the 30 s hold: the holder let go
            assert time.monotonic() - started < LONG_HOLD / 2
            assert _get(first) == pid  # the released connection was parked, not lost
            assert _get(first) == pid
        finally:
            first.close()
            second.close()


@pytest.mark.timeout(60)
def test_a_graceful_stop_releases_the_holder(long_hold):
    before = {child.pid for child in psutil.Process().children()}
    server = OneThreadServer((LOCALHOST, 0), PidHandler)
    address = server.server_address[:2]
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        with serving_in_thread(server):
            worker = _first_request_held(conn, before)
            started = time.monotonic()
        # shutdown() returned: the worker left well before its graceful_timeout
        # (a held connection is parked, then closed after the idle grace of 1 s).
        assert time.monotonic() - started < OneThreadServer.graceful_timeout / 2
        assert not psutil.pid_exists(worker.pid) or worker.status() == psutil.STATUS_ZOMBIE
    finally:
        conn.close()
