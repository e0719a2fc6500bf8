"""What an operator and a client see: log reopening, process titles, backpressure, pipelining."""

from __future__ import annotations

import http.client
import os
import signal
import socket
from pathlib import Path
from typing import Any

import psutil
import pytest

from .harness import READY, http_get, parse_pid_body, wait_until


@pytest.mark.timeout(60)
def test_usr1_reopens_log_files_in_master_and_workers(start_server, tmp_path: Path) -> None:
    """After logrotate renames the file, USR1 makes master and workers write a new one."""
    log = tmp_path / "app.log"
    server = start_server("--kind", "http", "--workers", 2, "--log-file", log)
    server.wait_for_line(READY, count=2)
    workers = server.wait_for_workers(2)
    rotated = tmp_path / "app.log.1"
    log.rename(rotated)
    server.send(signal.SIGUSR1)
    server.wait_for_line(r"master: received SIGUSR1")
    wait_until(log.exists, 10, "the master to reopen app.log")

    def new_file_has_lines_from_every_process() -> bool:
        server.send(signal.SIGTTIN)  # the master logs "master: workers N"
        server.send(signal.SIGTTOU)
        for _ in range(4):
            http_get(server.address, "/sleep?s=0")  # the worker logs "request ..."
        text = log.read_text()
        return all(f"pid={pid} " in text for pid in [server.pid, *workers])

    wait_until(new_file_has_lines_from_every_process, 20, "lines of every process in app.log")
    assert f"pid={server.pid} " in rotated.read_text(), "the old file keeps what came before"


@pytest.mark.timeout(60)
def test_process_titles_name_the_master_and_the_workers(start_server) -> None:
    server = start_server("--kind", "http", "--workers", 2)
    server.wait_for_line(READY, count=2)
    workers = server.wait_for_workers(2)
    assert " ".join(psutil.Process(server.pid).cmdline()).startswith("prefork: master")
    for pid in workers:
        assert " ".join(psutil.Process(pid).cmdline()).startswith("prefork: worker")


@pytest.mark.timeout(60)
def test_a_worker_with_no_idle_thread_leaves_new_connections_to_the_others(start_server) -> None:
    """Backpressure: while worker A's only thread is busy, every new request goes to B."""
    server = start_server("--kind", "http", "--workers", 2, "--threads", 1)
    server.wait_for_line(READY, count=2)
    busy_conn = http.client.HTTPConnection(*server.address, timeout=30)
    try:
        busy_conn.request("GET", "/sleep?s=8")
        busy_pid = int(server.wait_for_line(r"pid=(\d+) app INFO request /sleep\?s=8")[0][1])
        answered_by = [parse_pid_body(http_get(server.address, "/pid"))[0] for _ in range(20)]
        assert busy_pid not in answered_by, "a busy worker accepted a connection it cannot serve"
        assert len(set(answered_by)) == 1
    finally:
        busy_conn.close()


@pytest.mark.timeout(60)
def test_saturated_workers_take_new_connections_instead_of_starving_them(start_server) -> None:
    """Overflow: when every thread of every worker is busy, a new connection is still taken.

    Backpressure alone would leave it in the listen backlog until a thread
    frees; a saturated worker accepts it after two looks at the scoreboard.
    """
    server = start_server("--kind", "http", "--workers", 2, "--threads", 1)
    server.wait_for_line(READY, count=2)
    workers = server.wait_for_workers(2)
    busy = [http.client.HTTPConnection(*server.address, timeout=30) for _ in range(2)]
    client = http.client.HTTPConnection(*server.address, timeout=30)
    try:
        for conn in busy:
            conn.request("GET", "/sleep?s=8")
        matches = server.wait_for_line(r"pid=(\d+) app INFO request /sleep\?s=8", count=2)
        assert {int(match[1]) for match in matches} == workers, "each worker's thread is busy"
        client.connect()
        assert client.sock is not None
        client_port = client.sock.getsockname()[1]
        client.request("GET", "/pid")
        holder: list[int] = []

        def a_worker_accepted_the_client() -> bool:
            for pid in workers:
                connections = psutil.Process(pid).net_connections(kind="tcp")
                if any(c.raddr and c.raddr.port == client_port for c in connections):
                    holder.append(pid)
                    return True
            return False

        # Well inside the 8 s sleeps: the connection was taken, not left waiting.
        wait_until(
            a_worker_accepted_the_client, 3, "a saturated worker to accept", server.describe
        )
        response = client.getresponse()
        body = response.read().decode()
        assert response.status == 200, body
        assert parse_pid_body(body)[0] == holder[0], "answered by the worker that took it"
    finally:
        client.close()
        for conn in busy:
            conn.close()


@pytest.mark.timeout(60)
def test_pipelined_requests_are_all_answered_in_order(start_server) -> None:
    """Requests already buffered behind the first one are served without waiting for more."""
    server = start_server("--kind", "http", "--workers", 1)
    server.wait_for_line(READY)
    paths = ["/pid", "/sleep?s=0", "/pid", "/pid", "/nope"]  # a 404 closes the connection
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"".join(f"GET {p} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for p in paths))
        sock.shutdown(socket.SHUT_WR)
        with sock.makefile("rb") as reader:
            statuses = read_responses(reader, len(paths))
            assert reader.read() == b"", "the connection closes after the 404"
    assert statuses == [200, 200, 200, 200, 404]


def read_responses(reader: Any, count: int) -> list[int]:
    """The status codes of ``count`` HTTP responses read in sequence (bodies skipped)."""
    statuses = []
    for _ in range(count):
        status = int(reader.readline().split()[1])
        length = 0
        while (header := reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = header.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        reader.read(length)
        statuses.append(status)
    return statuses


@pytest.mark.timeout(60)
def test_workers_do_not_die_of_signals_meant_for_the_master(start_server) -> None:
    """A terminal's HUP or WINCH reaches the whole process group; workers must ignore it."""
    server = start_server("--kind", "http", "--workers", 2)
    server.wait_for_line(READY, count=2)
    workers = server.wait_for_workers(2)
    for pid in workers:
        for sig in (signal.SIGHUP, signal.SIGWINCH, signal.SIGTTIN, signal.SIGTTOU):
            os.kill(pid, sig)
    assert {parse_pid_body(http_get(server.address, "/pid"))[0] for _ in range(10)} <= workers
    assert server.worker_pids() == workers
