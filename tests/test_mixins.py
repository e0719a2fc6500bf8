"""ForkingMixIn and ThreadingMixIn: concurrency, child reaping, thread joining, interop."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from support import (
    LOCALHOST,
    TIMEOUT,
    connect,
    datagram_exchange,
    is_zombie,
    recv_all,
    serving,
    short_tmpdir,
    stream_exchange,
    wait_for,
    zombies,
)

import prefork


class PidHandler(prefork.StreamRequestHandler):
    """Read one line; reply ``<pid> <LINE>`` so the client learns who served it."""

    def handle(self) -> None:
        line = self.rfile.readline().strip()
        self.wfile.write(b"%d %s" % (os.getpid(), line.upper()))


class PidDatagramHandler(prefork.DatagramRequestHandler):
    """Reply ``<pid> <PACKET>`` to a datagram."""

    def handle(self) -> None:
        self.wfile.write(b"%d %s" % (os.getpid(), self.packet.upper()))


def pid_of(reply: bytes) -> int:
    """The serving pid from a PidHandler reply."""
    return int(reply.split()[0])


def forking(handler: type = PidHandler, **attrs: Any) -> Any:
    """A ForkingTCPServer on 127.0.0.1 port 0; ``attrs`` become class attributes."""
    cls = type("Server", (prefork.ForkingTCPServer,), attrs)
    return cls((LOCALHOST, 0), handler)


def threading_server(handler: type, **attrs: Any) -> Any:
    """A ThreadingTCPServer on 127.0.0.1 port 0; ``attrs`` become class attributes."""
    cls = type("Server", (prefork.ThreadingTCPServer,), attrs)
    return cls((LOCALHOST, 0), handler)


def our_child_pids() -> set[int]:
    """Pids of this process's direct children (zombies included)."""
    return {child.pid for child in psutil.Process().children()}


@contextlib.contextmanager
def unreaped_child() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated child process that has exited but is not reaped (a zombie)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        wait_for(lambda: is_zombie(proc.pid), message="the unrelated child to exit")
        yield proc
    finally:
        proc.kill()
        proc.wait(TIMEOUT)


# --- ForkingMixIn ---------------------------------------------------------


def test_forking_mixin_defaults() -> None:
    """Documented ForkingMixIn defaults."""
    assert prefork.ForkingMixIn.timeout == 300
    assert prefork.ForkingMixIn.max_children == 40
    assert prefork.ForkingMixIn.block_on_close is True
    assert not prefork.ForkingMixIn.active_children


def test_forking_handles_request_in_a_child_process() -> None:
    """Each request is handled in a new child process, reaped afterwards."""
    server = forking()
    with serving(server):
        pids = [pid_of(stream_exchange(server.server_address, b"x\n")) for _ in range(3)]
    assert os.getpid() not in pids
    assert len(set(pids)) == 3
    assert not server.active_children
    assert not our_child_pids() & set(pids)


def test_forking_serves_requests_concurrently() -> None:
    """A slow client does not block a second one: they are served by separate processes."""
    server = forking()
    with serving(server), connect(server.server_address) as slow:
        fast = stream_exchange(server.server_address, b"fast\n")
        assert fast.endswith(b" FAST")
        slow.sendall(b"slow\n")
        slow_reply = recv_all(slow)
        assert slow_reply.endswith(b" SLOW")
        assert pid_of(slow_reply) != pid_of(fast)


def test_active_children_tracks_live_child_and_is_empty_after_close() -> None:
    """active_children holds the pid of a busy child; server_close() leaves it empty."""
    server = forking()
    with serving(server), connect(server.server_address) as sock:
        wait_for(lambda: server.active_children, message="a child in active_children")
        (pid,) = set(server.active_children)
        assert pid in our_child_pids()
        assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        sock.sendall(b"done\n")
        assert pid_of(recv_all(sock)) == pid
    assert not server.active_children
    assert not psutil.pid_exists(pid) or pid not in our_child_pids()


def test_active_children_not_shared_between_servers() -> None:
    """Each server tracks its own children (no class-level shared container)."""
    busy, idle = forking(), forking()
    try:
        with serving(busy), connect(busy.server_address) as sock:
            wait_for(lambda: busy.active_children, message="a child in active_children")
            assert not idle.active_children
            sock.sendall(b"x\n")
            recv_all(sock)
    finally:
        idle.server_close()


def test_max_children_one_serves_all_requests() -> None:
    """With max_children=1 the server waits for its child before forking another."""
    server = forking(max_children=1)
    with serving(server):
        socks = [connect(server.server_address) for _ in range(5)]
        try:
            for i, sock in enumerate(socks):
                sock.sendall(b"req%d\n" % i)
            replies = [recv_all(sock) for sock in socks]
        finally:
            for sock in socks:
                sock.close()
        assert [r.split()[1] for r in replies] == [b"REQ%d" % i for i in range(5)]
        assert len(server.active_children or ()) <= 1
    assert not server.active_children


def test_max_children_does_not_reap_unrelated_child() -> None:
    """Reaping at max_children waits for the server's own children only."""
    with unreaped_child() as other:
        server = forking(max_children=1)
        with serving(server):
            for i in range(4):
                assert stream_exchange(server.server_address, b"r%d\n" % i).endswith(b"R%d" % i)
        assert is_zombie(other.pid), "the server reaped a child it did not fork"
        assert other.wait(TIMEOUT) == 0


@pytest.mark.timeout(60)
def test_wait_below_drops_children_reaped_elsewhere_without_waiting() -> None:
    """A pid reaped by someone else frees its place; no wait on the other children."""
    from prefork.core.children import ChildProcesses

    exited_child = subprocess.Popen([sys.executable, "-c", "pass"])
    exited_child.wait(TIMEOUT)  # reaped here, not by ChildProcesses
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        children = ChildProcesses({exited_child.pid})
        exited = children.wait_below(1)  # would block on the sleeper if it waited
        assert [(e.pid, e.status) for e in exited] == [(exited_child.pid, None)]
        assert not children
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait(TIMEOUT)


def test_collect_children_and_close_do_not_reap_unrelated_child() -> None:
    """collect_children(), handle_timeout() and server_close() leave other children alone."""
    with unreaped_child() as other:
        server = forking(timeout=0.01)
        try:
            with connect(server.server_address) as sock:
                sock.sendall(b"a\n")
                server.handle_request()
                recv_all(sock)
            server.collect_children()
            server.handle_request()  # times out: handle_timeout() collects children
            server.collect_children(blocking=True)
        finally:
            server.server_close()
        assert is_zombie(other.pid), "the server reaped a child it did not fork"
        assert other.wait(TIMEOUT) == 0


def test_collect_children_blocking_reaps_all_children() -> None:
    """collect_children(blocking=True) waits for and reaps every child."""
    server = forking()
    try:
        socks = [connect(server.server_address) for _ in range(3)]
        try:
            for sock in socks:
                sock.sendall(b"hi\n")
                server.handle_request()
            pids = set(server.active_children)
            assert len(pids) == 3
            assert pids <= our_child_pids()
            replies = [recv_all(sock) for sock in socks]
        finally:
            for sock in socks:
                sock.close()
        assert {pid_of(r) for r in replies} == pids
        server.collect_children(blocking=True)
        assert not server.active_children
        assert not pids & our_child_pids(), "children were not reaped"
    finally:
        server.server_close()


def test_handle_timeout_reaps_finished_children() -> None:
    """handle_timeout() (from handle_request) collects children that have exited."""
    server = forking(timeout=0.01)
    try:
        with connect(server.server_address) as sock:
            sock.sendall(b"x\n")
            server.handle_request()
            pid = pid_of(recv_all(sock))
        wait_for(lambda: is_zombie(pid), message="the child to exit")
        assert pid in server.active_children
        server.handle_request()
        assert not server.active_children
        assert not is_zombie(pid)
    finally:
        server.server_close()


def test_service_actions_reap_children_while_serving() -> None:
    """serve_forever() reaps exited children without waiting for server_close()."""
    server = forking()
    with serving(server):
        pid = pid_of(stream_exchange(server.server_address, b"x\n"))
        wait_for(lambda: pid not in our_child_pids(), message="the child to be reaped")
        assert pid not in (server.active_children or ())


def test_no_zombies_left_after_many_requests() -> None:
    """After serving many requests and closing, no zombie children remain."""
    server = forking()
    with serving(server):
        for i in range(10):
            assert stream_exchange(server.server_address, b"%d\n" % i).endswith(b"%d" % i)
    assert zombies() == []
    assert not server.active_children


def test_forking_block_on_close_waits_for_children() -> None:
    """With block_on_close=True, server_close() returns only after children exit."""
    server = forking()
    closed = threading.Event()
    gone_when_closed: list[bool] = []

    def close() -> None:
        server.server_close()
        gone_when_closed.append(pid not in our_child_pids())
        closed.set()

    with connect(server.server_address) as sock:
        server.handle_request()
        (pid,) = set(server.active_children)
        closer = threading.Thread(target=close, name="closer")
        closer.start()
        try:
            assert not closed.wait(0.2), "server_close() did not wait for the busy child"
            sock.sendall(b"bye\n")
            assert pid_of(recv_all(sock)) == pid
        finally:
            closer.join(TIMEOUT)
    assert closed.is_set()
    assert gone_when_closed == [True]


def test_forking_block_on_close_false_returns_while_child_runs() -> None:
    """With block_on_close=False, server_close() does not wait for busy children."""
    server = forking(block_on_close=False)
    with connect(server.server_address) as sock:
        server.handle_request()
        (pid,) = set(server.active_children)
        server.server_close()
        try:
            assert pid in our_child_pids()
            assert not is_zombie(pid), "server_close() waited for the child"
            sock.sendall(b"late\n")
            assert recv_all(sock).endswith(b"LATE")
        finally:
            os.waitpid(pid, 0)


def test_forking_handle_error_runs_in_child_and_server_continues() -> None:
    """A handler error is handled in the child; the next request is served."""

    class Handler(PidHandler):
        def handle(self) -> None:
            if self.rfile.readline() == b"fail\n":
                raise ValueError("child failure")
            self.wfile.write(b"fine")

    class Server(prefork.ForkingTCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            exc = sys.exc_info()[1]
            request.sendall(b"handled %r in %d" % (exc, os.getpid()))

    server = Server((LOCALHOST, 0), Handler)
    with serving(server):
        reply = stream_exchange(server.server_address, b"fail\n")
        assert reply.startswith(b"handled ValueError('child failure') in ")
        assert int(reply.split()[-1]) != os.getpid()
        assert stream_exchange(server.server_address, b"ok\n") == b"fine"


def test_forking_udp_server() -> None:
    """ForkingUDPServer answers datagrams from child processes."""
    server = prefork.ForkingUDPServer((LOCALHOST, 0), PidDatagramHandler)
    with serving(server):
        reply = datagram_exchange(server.server_address, b"dgram")
    assert reply.endswith(b" DGRAM") and pid_of(reply) != os.getpid()


def test_forking_unix_stream_server() -> None:
    """ForkingUnixStreamServer serves from child processes."""
    with short_tmpdir() as tmp:
        path = os.path.join(tmp, "s")
        server = prefork.ForkingUnixStreamServer(path, PidHandler)
        with serving(server):
            reply = stream_exchange(path, b"unix\n", family=socket.AF_UNIX)
    assert reply.endswith(b" UNIX") and pid_of(reply) != os.getpid()


def test_forking_unix_datagram_server() -> None:
    """ForkingUnixDatagramServer serves from child processes."""
    with short_tmpdir() as tmp:
        path = os.path.join(tmp, "d")
        server = prefork.ForkingUnixDatagramServer(path, PidDatagramHandler)
        with serving(server):
            reply = datagram_exchange(
                path, b"unix", family=socket.AF_UNIX, bind=os.path.join(tmp, "c")
            )
    assert reply.endswith(b" UNIX") and pid_of(reply) != os.getpid()


# --- ThreadingMixIn -------------------------------------------------------


class ThreadInfoHandler(prefork.StreamRequestHandler):
    """Record the handling thread on the server, then reply with its name."""

    def handle(self) -> None:
        thread = threading.current_thread()
        self.server.handler_threads.append(thread)
        line = self.rfile.readline()
        self.wfile.write(thread.name.encode() + b" " + line.upper())


def threaded(handler: type = ThreadInfoHandler, **attrs: Any) -> Any:
    """A ThreadingTCPServer with a ``handler_threads`` list for its handlers."""
    server = threading_server(handler, **attrs)
    server.handler_threads = []
    return server


def test_threading_mixin_defaults() -> None:
    """Documented ThreadingMixIn defaults."""
    assert prefork.ThreadingMixIn.daemon_threads is False
    assert prefork.ThreadingMixIn.block_on_close is True


def test_threading_serves_requests_concurrently() -> None:
    """Two handlers that wait for each other both finish: they run at the same time."""
    barrier = threading.Barrier(2, timeout=TIMEOUT)

    class Handler(prefork.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            barrier.wait()
            self.wfile.write(line.upper())

    server = threading_server(Handler)
    with serving(server):
        socks = [connect(server.server_address) for _ in range(2)]
        try:
            for sock in socks:
                sock.sendall(b"meet\n")
            assert [recv_all(sock) for sock in socks] == [b"MEET\n", b"MEET\n"]
        finally:
            for sock in socks:
                sock.close()


def test_threading_uses_a_new_thread_per_request() -> None:
    """Each request runs in its own thread, never the serve_forever thread."""
    server = threaded()
    with serving(server):
        for _ in range(3):
            stream_exchange(server.server_address, b"x\n")
    threads = server.handler_threads
    assert len({id(t) for t in threads}) == 3
    assert all(t.name != "serve_forever" for t in threads)
    assert all(t is not threading.main_thread() for t in threads)


@pytest.mark.parametrize("daemon", [False, True])
def test_daemon_threads_sets_thread_daemon_flag(daemon: bool) -> None:
    """Handler threads are daemon threads exactly when daemon_threads is true."""
    server = threaded(daemon_threads=daemon)
    with serving(server):
        stream_exchange(server.server_address, b"x\n")
    assert [t.daemon for t in server.handler_threads] == [daemon]


def _busy_server(**attrs: Any) -> tuple[Any, threading.Event, threading.Event]:
    """A threading server whose handler blocks until ``release`` is set."""
    started, release = threading.Event(), threading.Event()

    class Handler(ThreadInfoHandler):
        def handle(self) -> None:
            self.server.handler_threads.append(threading.current_thread())
            started.set()
            release.wait(TIMEOUT)
            self.wfile.write(b"released")

    return threaded(Handler, **attrs), started, release


def test_block_on_close_joins_running_handler_threads() -> None:
    """server_close() blocks until non-daemon handler threads have finished."""
    server, started, release = _busy_server()
    closed = threading.Event()
    alive_when_closed: list[bool] = []

    def close() -> None:
        server.server_close()
        alive_when_closed.append(server.handler_threads[0].is_alive())
        closed.set()

    with connect(server.server_address) as sock:
        server.handle_request()
        assert started.wait(TIMEOUT)
        closer = threading.Thread(target=close, name="closer")
        closer.start()
        try:
            assert not closed.wait(0.2), "server_close() did not wait for the handler"
        finally:
            release.set()
            closer.join(TIMEOUT)
        assert recv_all(sock) == b"released"
    assert closed.is_set()
    assert alive_when_closed == [False]


@pytest.mark.parametrize("attrs", [{"block_on_close": False}, {"daemon_threads": True}])
def test_server_close_does_not_wait_when_not_blocking(attrs: dict[str, bool]) -> None:
    """block_on_close=False or daemon threads: server_close() leaves handlers running."""
    server, started, release = _busy_server(**attrs)
    with connect(server.server_address) as sock:
        server.handle_request()
        assert started.wait(TIMEOUT)
        thread = server.handler_threads[0]
        try:
            server.server_close()
            assert thread.is_alive(), "server_close() waited for the handler thread"
        finally:
            release.set()
            thread.join(TIMEOUT)
        assert recv_all(sock) == b"released"
    assert not thread.is_alive()


def test_threads_list_drops_finished_threads() -> None:
    """``_threads`` has a length and does not keep finished threads around."""
    server = threaded()
    assert len(server._threads) == 0
    with serving(server):
        for i in range(10):
            stream_exchange(server.server_address, b"%d\n" % i)
        assert len(server._threads) <= 10
        wait_for(lambda: not any(t.is_alive() for t in server.handler_threads))
        # Starting the next thread forgets every finished one.
        stream_exchange(server.server_address, b"last\n")
        assert list(server._threads) in ([], [server.handler_threads[-1]])
    assert len(server._threads) == 0


def test_threads_list_ignores_daemon_threads() -> None:
    """Daemon handler threads are not kept for joining."""
    server = threaded(daemon_threads=True)
    with serving(server):
        for i in range(3):
            stream_exchange(server.server_address, b"%d\n" % i)
        assert len(server._threads) == 0
        wait_for(lambda: not any(t.is_alive() for t in server.handler_threads))


def test_threading_handler_error_and_shutdown_request_once_each() -> None:
    """In threads, errors reach handle_error() and every request is shut down once."""
    lock = threading.Lock()
    shut: list[int] = []
    errors: list[tuple[str, type]] = []

    class Handler(prefork.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            if line.startswith(b"bad"):
                raise ValueError(line)
            self.wfile.write(line.upper())

    class Server(prefork.ThreadingTCPServer):
        def shutdown_request(self, request: Any) -> None:
            with lock:
                shut.append(id(request))
            super().shutdown_request(request)

        def handle_error(self, request: Any, client_address: Any) -> None:
            with lock:
                errors.append((threading.current_thread().name, sys.exc_info()[0]))

    server = Server((LOCALHOST, 0), Handler)
    with serving(server):
        socks = [connect(server.server_address) for _ in range(10)]
        try:
            for i, sock in enumerate(socks):
                sock.sendall(b"bad\n" if i % 3 == 0 else b"good\n")
            replies = [recv_all(sock) for sock in socks]
        finally:
            for sock in socks:
                sock.close()
    assert replies == [b"" if i % 3 == 0 else b"GOOD\n" for i in range(10)]
    assert len(shut) == 10
    assert len(errors) == 4
    assert all(kind is ValueError and name != "serve_forever" for name, kind in errors)


def test_process_request_thread_is_the_overridable_thread_body() -> None:
    """Request threads run process_request_thread(request, client_address)."""
    calls = []

    class Server(prefork.ThreadingTCPServer):
        def process_request_thread(self, request: Any, client_address: Any) -> None:
            calls.append((threading.current_thread().name, client_address))
            super().process_request_thread(request, client_address)

    server = Server((LOCALHOST, 0), PidHandler)
    with serving(server), connect(server.server_address) as sock:
        client = sock.getsockname()
        sock.sendall(b"x\n")
        assert recv_all(sock) == b"%d X" % os.getpid()
    assert len(calls) == 1
    assert calls[0][0] != "serve_forever" and calls[0][1] == client


@pytest.mark.parametrize("cls", ["TCPServer", "ThreadingTCPServer", "ForkingTCPServer"])
def test_server_close_twice_is_harmless(cls: str) -> None:
    """server_close() may be called again (e.g. by a with-block after an explicit close)."""
    with getattr(prefork, cls)((LOCALHOST, 0), PidHandler) as server:
        with serving(server):
            assert stream_exchange(server.server_address, b"a\n").endswith(b" A")
        server.server_close()
    assert server.fileno() == -1


def test_threading_udp_server() -> None:
    """ThreadingUDPServer answers datagrams from handler threads."""

    class Handler(prefork.DatagramRequestHandler):
        def handle(self) -> None:
            self.wfile.write(threading.current_thread().name.encode())

    server = prefork.ThreadingUDPServer((LOCALHOST, 0), Handler)
    with serving(server):
        name = datagram_exchange(server.server_address, b"x")
    assert name not in (b"", b"serve_forever", threading.main_thread().name.encode())


def test_threading_unix_stream_server() -> None:
    """ThreadingUnixStreamServer serves on a Unix path from handler threads."""
    with short_tmpdir() as tmp:
        path = os.path.join(tmp, "s")
        server = prefork.ThreadingUnixStreamServer(path, ThreadInfoHandler)
        server.handler_threads = []
        with serving(server):
            reply = stream_exchange(path, b"unix\n", family=socket.AF_UNIX)
        assert reply.endswith(b" UNIX\n")
        assert server.handler_threads[0].name != "serve_forever"


def test_threading_unix_datagram_server() -> None:
    """ThreadingUnixDatagramServer answers on a Unix datagram path."""
    with short_tmpdir() as tmp:
        path = os.path.join(tmp, "d")
        server = prefork.ThreadingUnixDatagramServer(path, PidDatagramHandler)
        with serving(server):
            reply = datagram_exchange(
                path, b"unix", family=socket.AF_UNIX, bind=os.path.join(tmp, "c")
            )
    assert reply == b"%d UNIX" % os.getpid()


# --- interoperability with http.server ------------------------------------


class HelloHTTPHandler(http.server.BaseHTTPRequestHandler):
    """Answer GET with the path and the serving pid and thread."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = f"{self.path} {os.getpid()} {threading.current_thread().name}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""


def http_get(address: tuple[str, int], paths: list[str]) -> list[tuple[int, str]]:
    """GET each path on one connection (keep-alive if the server allows)."""
    conn = http.client.HTTPConnection(address[0], address[1], timeout=TIMEOUT)
    try:
        results = []
        for path in paths:
            conn.request("GET", path)
            response = conn.getresponse()
            results.append((response.status, response.read().decode()))
        return results
    finally:
        conn.close()


def test_threading_mixin_with_stdlib_http_server() -> None:
    """``class S(prefork.ThreadingMixIn, http.server.HTTPServer)`` serves HTTP/1.1 clients."""

    class S(prefork.ThreadingMixIn, http.server.HTTPServer):
        pass

    server = S((LOCALHOST, 0), HelloHTTPHandler)
    with serving(server):
        first = http_get(server.server_address, ["/a", "/b"])
        second = http_get(server.server_address, ["/c"])
    assert [status for status, _ in first + second] == [200, 200, 200]
    bodies = [body.split() for _, body in first + second]
    assert [b[0] for b in bodies] == ["/a", "/b", "/c"]
    assert {int(b[1]) for b in bodies} == {os.getpid()}
    # Keep-alive requests share a handler thread; a new connection gets another.
    assert bodies[0][2] == bodies[1][2] != bodies[2][2]


class OneShotHTTPHandler(HelloHTTPHandler):
    """HTTP/1.0: the connection closes after each response.

    The client runs in this very process, so a forked child inherits the client's
    end of the connection and would never see it close; one request per
    connection sidesteps that.
    """

    protocol_version = "HTTP/1.0"


def test_forking_mixin_with_stdlib_http_server() -> None:
    """``class S(prefork.ForkingMixIn, http.server.HTTPServer)`` serves HTTP clients."""

    class S(prefork.ForkingMixIn, http.server.HTTPServer):
        pass

    server = S((LOCALHOST, 0), OneShotHTTPHandler)
    with serving(server):
        results = [http_get(server.server_address, [path])[0] for path in ["/a", "/b"]]
    assert [status for status, _ in results] == [200, 200]
    bodies = [body.split() for _, body in results]
    assert [b[0] for b in bodies] == ["/a", "/b"]
    pids = {int(b[1]) for b in bodies}
    assert os.getpid() not in pids and len(pids) == 2
    assert zombies() == []
    assert not server.active_children
