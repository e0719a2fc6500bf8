"""Server classes: the BaseServer loop and hooks, TCP/UDP/Unix/IPv6 servers, errors."""

from __future__ import annotations

import ast
import errno
import os
import select
import selectors
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from support import (
    LOCALHOST,
    TIMEOUT,
    closing_server,
    connect,
    datagram_exchange,
    in_call,
    ipv6_available,
    num_fds,
    read_until_closed,
    recv_all,
    serving,
    short_tmpdir,
    shutdown_within,
    stream_exchange,
    wait_for,
)

import prefork

PUBLIC_NAMES = [
    "BaseServer",
    "TCPServer",
    "UDPServer",
    "UnixStreamServer",
    "UnixDatagramServer",
    "ForkingMixIn",
    "ThreadingMixIn",
    "ForkingTCPServer",
    "ForkingUDPServer",
    "ForkingUnixStreamServer",
    "ForkingUnixDatagramServer",
    "ThreadingTCPServer",
    "ThreadingUDPServer",
    "ThreadingUnixStreamServer",
    "ThreadingUnixDatagramServer",
    "BaseRequestHandler",
    "StreamRequestHandler",
    "DatagramRequestHandler",
]


class UpperHandler(prefork.StreamRequestHandler):
    """Reply with the upper-cased request."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.read().upper())


class UpperDatagramHandler(prefork.DatagramRequestHandler):
    """Reply with the upper-cased datagram."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.read().upper())


def tcp_server(handler: Any = UpperHandler, cls: Any = None, **attrs: Any) -> Any:
    """A TCP server on 127.0.0.1 port 0; ``attrs`` become class attributes."""
    base = cls or prefork.TCPServer
    server_cls = type("Server", (base,), attrs) if attrs else base
    return server_cls((LOCALHOST, 0), handler)


# --- the public API -------------------------------------------------------


def test_all_exports_documented_names() -> None:
    """``__all__`` lists every documented socketserver name and each one exists."""
    assert set(PUBLIC_NAMES) <= set(prefork.__all__)
    for name in PUBLIC_NAMES:
        assert isinstance(getattr(prefork, name), type), name


def test_engine_names_load_lazily_and_all_of_them() -> None:
    """``import prefork`` leaves the engine out; each engine name loads it on first use."""
    probe = (
        "import sys, prefork\n"
        "assert 'prefork.engine' not in sys.modules, 'engine imported eagerly'\n"
        "from prefork import engine\n"
        "lazy = set(prefork._ENGINE_NAMES)\n"
        "assert lazy == set(engine.__all__), lazy ^ set(engine.__all__)\n"
        "assert lazy <= set(prefork.__all__)\n"
        "assert all(getattr(prefork, n) is getattr(engine, n) for n in lazy)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_class_hierarchy_matches_socketserver() -> None:
    """Inheritance follows the documented diagram and mixin order."""
    assert issubclass(prefork.TCPServer, prefork.BaseServer)
    assert issubclass(prefork.UDPServer, prefork.TCPServer)
    assert issubclass(prefork.UnixStreamServer, prefork.TCPServer)
    assert issubclass(prefork.UnixDatagramServer, prefork.UDPServer)
    assert not issubclass(prefork.UnixDatagramServer, prefork.UnixStreamServer)
    for mixin, kind in [("Forking", prefork.ForkingMixIn), ("Threading", prefork.ThreadingMixIn)]:
        for base in ["TCPServer", "UDPServer", "UnixStreamServer", "UnixDatagramServer"]:
            cls = getattr(prefork, mixin + base)
            assert cls.__mro__[1] is kind, cls
            assert issubclass(cls, getattr(prefork, base))
    assert issubclass(prefork.StreamRequestHandler, prefork.BaseRequestHandler)
    assert issubclass(prefork.DatagramRequestHandler, prefork.BaseRequestHandler)


def test_class_attribute_defaults() -> None:
    """Documented defaults: families, socket types, reuse flags, timeouts, sizes."""
    assert prefork.BaseServer.timeout is None
    assert prefork.TCPServer.address_family == socket.AF_INET
    assert prefork.TCPServer.socket_type == socket.SOCK_STREAM
    assert prefork.TCPServer.allow_reuse_address is False
    assert prefork.TCPServer.allow_reuse_port is False
    queue_size = prefork.TCPServer.request_queue_size
    assert isinstance(queue_size, int) and queue_size >= 5
    assert prefork.UDPServer.socket_type == socket.SOCK_DGRAM
    assert prefork.UDPServer.allow_reuse_address is False
    assert prefork.UDPServer.max_packet_size == 8192
    assert prefork.UnixStreamServer.address_family == socket.AF_UNIX
    assert prefork.UnixStreamServer.socket_type == socket.SOCK_STREAM
    assert prefork.UnixDatagramServer.address_family == socket.AF_UNIX
    assert prefork.UnixDatagramServer.socket_type == socket.SOCK_DGRAM


# --- TCP basics -----------------------------------------------------------


def test_tcp_server_serves_and_reports_bound_address() -> None:
    """A TCPServer on port 0 records its real port and answers requests."""
    with serving(tcp_server()) as server:
        host, port = server.server_address
        assert host == LOCALHOST and port != 0
        assert server.socket.getsockname() == server.server_address
        assert server.RequestHandlerClass is UpperHandler
        assert server.socket.type == socket.SOCK_STREAM
        assert server.socket.family == socket.AF_INET
        for i in range(3):
            assert stream_exchange(server.server_address, b"req %d" % i) == b"REQ %d" % i


def test_handle_request_serves_exactly_one_request() -> None:
    """handle_request() accepts and finishes one connection, then returns."""
    with closing_server(tcp_server()) as server, connect(server.server_address) as sock:
        sock.sendall(b"one")
        sock.shutdown(socket.SHUT_WR)
        server.handle_request()
        assert recv_all(sock) == b"ONE"


def test_pending_connections_up_to_request_queue_size_are_served() -> None:
    """Connections made before the server accepts wait in the backlog and are all served."""
    queue = 16

    with closing_server(tcp_server(request_queue_size=queue)) as server:
        clients = []
        try:
            for i in range(queue):
                sock = connect(server.server_address)
                clients.append(sock)
                sock.sendall(b"c%d" % i)
                sock.shutdown(socket.SHUT_WR)
            for _ in clients:
                server.handle_request()
            assert [recv_all(s) for s in clients] == [b"C%d" % i for i in range(queue)]
        finally:
            for sock in clients:
                sock.close()


def test_fileno_is_socket_fd_then_minus_one_after_close() -> None:
    """fileno() is the listening socket's fd, and -1 once server_close() ran."""
    server = tcp_server()
    try:
        assert server.fileno() == server.socket.fileno() >= 0
    finally:
        server.server_close()
    assert server.fileno() == -1


def test_context_manager_closes_server() -> None:
    """``with Server(...) as s`` returns the server and closes it on exit."""
    server = tcp_server()
    with server as entered:
        assert entered is server
        assert server.fileno() >= 0
    assert server.fileno() == -1


def test_context_manager_closes_server_on_error() -> None:
    """The server is closed when the with-block raises."""
    server = tcp_server()
    with pytest.raises(RuntimeError), server:
        raise RuntimeError("boom")
    assert server.fileno() == -1


def test_bind_and_activate_false_defers_binding() -> None:
    """With bind_and_activate=False the caller binds and activates explicitly."""
    server = prefork.TCPServer((LOCALHOST, 0), UpperHandler, bind_and_activate=False)
    with closing_server(server):
        assert server.server_address == (LOCALHOST, 0)
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        server.server_bind()
        assert server.server_address[1] != 0
        server.server_activate()
        with serving(server):
            assert stream_exchange(server.server_address, b"late") == b"LATE"


@pytest.mark.parametrize(
    ("attr", "option"),
    [("allow_reuse_address", socket.SO_REUSEADDR), ("allow_reuse_port", socket.SO_REUSEPORT)],
)
def test_reuse_options_are_applied(attr: str, option: int) -> None:
    """allow_reuse_address / allow_reuse_port set the socket option; default is off."""
    with closing_server(tcp_server()) as plain:
        assert plain.socket.getsockopt(socket.SOL_SOCKET, option) == 0
    with closing_server(tcp_server(**{attr: True})) as server:
        assert server.socket.getsockopt(socket.SOL_SOCKET, option) != 0


# --- serve_forever and shutdown -------------------------------------------


def test_shutdown_from_other_thread_is_prompt_despite_long_poll_interval() -> None:
    """shutdown() wakes serve_forever at once; it does not wait for poll_interval."""
    server = tcp_server()
    with serving(server, poll_interval=30):
        assert stream_exchange(server.server_address, b"x") == b"X"
        # Only once the loop is parked in select() does a missing wakeup show.
        wait_for(
            lambda: in_call(server.serve_thread, "select", selectors.__file__),
            message="serve_forever() to wait in select()",
        )
        start = time.monotonic()
        server.shutdown()
        elapsed = time.monotonic() - start
    assert elapsed < 5.0, f"shutdown took {elapsed:.1f}s with poll_interval=30"


def test_shutdown_before_serve_forever_makes_it_return_promptly() -> None:
    """A shutdown() issued before serve_forever() starts stops it as soon as it begins."""
    server = tcp_server()
    done = threading.Event()
    stopper = threading.Thread(target=server.shutdown, name="stopper")
    runner = threading.Thread(
        target=lambda: (server.serve_forever(poll_interval=30), done.set()),
        name="serve_forever",
    )
    finished, elapsed = False, float("inf")
    with closing_server(server):
        stopper.start()
        try:
            # shutdown() blocks until a serve_forever() finishes; wait until it is blocked.
            wait_for(
                lambda: in_call(stopper, "wait", threading.__file__),
                message="shutdown() to block",
            )
            start = time.monotonic()
            runner.start()
            finished = done.wait(5.0)
            elapsed = time.monotonic() - start
        finally:
            if runner.ident is None:
                runner.start()  # a serve_forever() run is what releases the stopper
            if not done.is_set():
                shutdown_within(server, TIMEOUT)  # stop a loop that ignored the request
            runner.join(TIMEOUT)
            stopper.join(TIMEOUT)
    assert finished, "serve_forever ignored a shutdown() issued before it started"
    assert elapsed < 5.0
    assert not stopper.is_alive()


def test_serve_forever_can_run_again_after_shutdown() -> None:
    """After shutdown() returns, serve_forever() may be called again and serves."""
    server = tcp_server()
    with closing_server(server):
        for round_ in range(2):
            with_thread = threading.Thread(target=server.serve_forever, args=(0.05,))
            with_thread.start()
            try:
                reply = stream_exchange(server.server_address, b"round %d" % round_)
                assert reply == b"ROUND %d" % round_
            finally:
                server.shutdown()
                with_thread.join(TIMEOUT)
            assert not with_thread.is_alive()


def test_service_actions_called_from_serve_forever() -> None:
    """service_actions() runs repeatedly while serve_forever() loops, even when idle."""
    calls: list[str] = []
    called_twice = threading.Event()

    class Server(prefork.TCPServer):
        def service_actions(self) -> None:
            calls.append(threading.current_thread().name)
            if len(calls) >= 2:
                called_twice.set()

    with serving(Server((LOCALHOST, 0), UpperHandler), poll_interval=0.01):
        assert called_twice.wait(TIMEOUT), "service_actions() was not called"
    assert set(calls) == {"serve_forever"}


def test_service_actions_called_after_a_request() -> None:
    """service_actions() also runs after handling a request, not only on poll timeouts."""
    after_request = threading.Event()
    handled = threading.Event()

    class Handler(UpperHandler):
        def handle(self) -> None:
            super().handle()
            handled.set()

    class Server(prefork.TCPServer):
        def service_actions(self) -> None:
            if handled.is_set():
                after_request.set()

    server = Server((LOCALHOST, 0), Handler)
    with serving(server, poll_interval=30):
        assert stream_exchange(server.server_address, b"a") == b"A"
        assert after_request.wait(TIMEOUT), "service_actions() not called after the request"


# --- handle_request and timeouts ------------------------------------------


def test_handle_request_calls_handle_timeout_when_idle() -> None:
    """handle_request() with ``timeout`` set and no client calls handle_timeout()."""
    timeouts = []

    class Server(prefork.TCPServer):
        timeout = 0.05

        def handle_timeout(self) -> None:
            timeouts.append(time.monotonic())

    with closing_server(Server((LOCALHOST, 0), UpperHandler)) as server:
        start = time.monotonic()
        server.handle_request()
        assert len(timeouts) == 1
        assert timeouts[0] - start >= 0.05


def test_handle_request_uses_socket_timeout_when_smaller() -> None:
    """A socket timeout smaller than ``timeout`` bounds handle_request() as in the stdlib."""
    timeouts = []

    class Server(prefork.TCPServer):
        timeout = 8

        def handle_timeout(self) -> None:
            timeouts.append(True)

    with closing_server(Server((LOCALHOST, 0), UpperHandler)) as server:
        server.socket.settimeout(0.05)
        start = time.monotonic()
        server.handle_request()
        assert timeouts == [True]
        assert time.monotonic() - start < 4, "handle_request() ignored the socket timeout"


def test_handle_request_with_timeout_still_serves_a_waiting_client() -> None:
    """handle_request() handles a pending request instead of timing out."""
    timeouts = []

    class Server(prefork.TCPServer):
        timeout = TIMEOUT

        def handle_timeout(self) -> None:
            timeouts.append(True)

    with closing_server(Server((LOCALHOST, 0), UpperHandler)) as server:
        with connect(server.server_address) as sock:
            sock.sendall(b"here")
            sock.shutdown(socket.SHUT_WR)
            server.handle_request()
            assert recv_all(sock) == b"HERE"
        assert timeouts == []


# --- hooks around a request -----------------------------------------------


class RecordingServer(prefork.TCPServer):
    """Records each hook call as (name, request fd or None) under a lock."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.events: list[tuple[str, Any]] = []
        self.lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def record(self, name: str, value: Any = None) -> None:
        with self.lock:
            self.events.append((name, value))

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.record("verify", client_address)
        return super().verify_request(request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.record("process", client_address)
        super().process_request(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        self.record("finish", client_address)
        super().finish_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.record("shutdown", id(request))
        super().shutdown_request(request)

    def close_request(self, request: Any) -> None:
        self.record("close", id(request))
        super().close_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.record("error", sys.exc_info()[0])

    def names(self) -> list[str]:
        with self.lock:
            return [name for name, _ in self.events]


def test_hooks_run_in_documented_order_once_per_request() -> None:
    """verify -> process -> finish -> shutdown_request -> close_request, once each."""
    server = RecordingServer((LOCALHOST, 0), UpperHandler)
    with serving(server):
        for i in range(3):
            assert stream_exchange(server.server_address, b"r%d" % i) == b"R%d" % i
    names = server.names()
    assert names == ["verify", "process", "finish", "shutdown", "close"] * 3
    shut = [value for name, value in server.events if name == "shutdown"]
    assert len(shut) == 3


def test_verify_request_false_closes_request_without_handling() -> None:
    """A rejected request is shut down and closed; the handler never runs."""
    handled = []

    class Handler(prefork.BaseRequestHandler):
        def handle(self) -> None:
            handled.append(True)

    class Server(RecordingServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            super().verify_request(request, client_address)
            return False

    server = Server((LOCALHOST, 0), Handler)
    with serving(server):
        assert read_until_closed(server.server_address) == b"", "rejected: must be closed"
        wait_for(lambda: "close" in server.names(), message="close_request")
    assert handled == []
    assert server.names() == ["verify", "shutdown", "close"]


def test_get_request_and_finish_request_are_overridable() -> None:
    """Overridden get_request() and finish_request() are used by the loop."""
    seen = []

    class Server(prefork.TCPServer):
        def get_request(self) -> Any:
            request, address = super().get_request()
            seen.append(("get", address))
            return request, ("tagged", address)

        def finish_request(self, request: Any, client_address: Any) -> None:
            seen.append(("finish", client_address[0]))
            request.sendall(b"custom")

    server = Server((LOCALHOST, 0), prefork.BaseRequestHandler)
    with serving(server):
        assert stream_exchange(server.server_address, b"") == b"custom"
    assert [kind for kind, _ in seen] == ["get", "finish"]
    assert seen[1][1] == "tagged"


def test_handler_exception_calls_handle_error_and_server_continues() -> None:
    """An exception in handle() goes to handle_error(); the next request is served."""

    class Handler(prefork.StreamRequestHandler):
        def handle(self) -> None:
            data = self.rfile.read()
            if data == b"fail":
                raise ValueError("handler failed")
            self.wfile.write(data.upper())

    server = RecordingServer((LOCALHOST, 0), Handler)
    with serving(server):
        assert stream_exchange(server.server_address, b"fail") == b""
        assert stream_exchange(server.server_address, b"ok") == b"OK"
    errors = [value for name, value in server.events if name == "error"]
    assert errors == [ValueError]
    assert server.names().count("shutdown") == 2


def test_default_handle_error_prints_traceback_to_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The default handle_error() prints the client address and traceback to stderr."""

    class Handler(prefork.BaseRequestHandler):
        def handle(self) -> None:
            raise ZeroDivisionError("kaboom")

    server = tcp_server(Handler)
    with serving(server):
        with connect(server.server_address) as sock:
            client = sock.getsockname()
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == b""
        assert stream_exchange(server.server_address, b"") == b""
    err = capsys.readouterr().err
    assert "Exception occurred during processing of request from" in err
    assert str(client) in err
    assert "ZeroDivisionError: kaboom" in err
    assert "-" * 40 in err


def test_process_request_exception_goes_to_handle_error() -> None:
    """An exception raised by process_request() itself is handled and the request closed."""

    class Server(RecordingServer):
        def process_request(self, request: Any, client_address: Any) -> None:
            self.record("process", client_address)
            raise OSError("cannot process")

    server = Server((LOCALHOST, 0), UpperHandler)
    with serving(server):
        assert read_until_closed(server.server_address) == b""
        wait_for(lambda: "close" in server.names(), message="close_request")
    assert server.names() == ["verify", "process", "error", "shutdown", "close"]


def test_base_exception_in_handler_propagates_after_request_is_closed() -> None:
    """A BaseException (not Exception) escapes handle_request(); the request is closed first."""

    class Stop(BaseException):
        pass

    class Handler(prefork.BaseRequestHandler):
        def handle(self) -> None:
            raise Stop

    server = RecordingServer((LOCALHOST, 0), Handler)
    with closing_server(server), connect(server.server_address) as sock:
        sock.shutdown(socket.SHUT_WR)
        with pytest.raises(Stop):
            server.handle_request()
        assert recv_all(sock) == b""
    assert server.names() == ["verify", "process", "finish", "shutdown", "close"]


def test_get_request_oserror_is_ignored() -> None:
    """An OSError from get_request() drops that attempt; the server keeps serving."""
    failures = []

    class Server(prefork.TCPServer):
        def get_request(self) -> Any:
            request, address = super().get_request()
            if not failures:
                failures.append(address)
                request.close()
                raise ConnectionAbortedError("simulated accept failure")
            return request, address

    server = Server((LOCALHOST, 0), UpperHandler)
    with serving(server):
        assert read_until_closed(server.server_address) == b""
        assert stream_exchange(server.server_address, b"kept") == b"KEPT"
    assert len(failures) == 1


# --- construction errors: same exception, no leaked socket ---------------


def _assert_fails_without_leak(exc_type: type[BaseException], build: Any) -> BaseException:
    """Run ``build()``, expect ``exc_type``, and check no file descriptor stays open."""
    before = num_fds()
    with pytest.raises(exc_type) as info:
        build()
    assert num_fds() == before, "the server's socket was not closed after the failure"
    return info.value


def test_bind_address_in_use_raises_eaddrinuse_and_closes_socket() -> None:
    """Binding a busy TCP port raises OSError(EADDRINUSE) and frees the new socket."""
    with closing_server(tcp_server()) as first:
        exc = _assert_fails_without_leak(
            OSError, lambda: prefork.TCPServer(first.server_address, UpperHandler)
        )
        assert exc.errno == errno.EADDRINUSE


def test_udp_bind_address_in_use_raises_eaddrinuse() -> None:
    """The same holds for a UDP server."""
    with closing_server(prefork.UDPServer((LOCALHOST, 0), UpperDatagramHandler)) as first:
        exc = _assert_fails_without_leak(
            OSError, lambda: prefork.UDPServer(first.server_address, UpperDatagramHandler)
        )
        assert exc.errno == errno.EADDRINUSE


def test_ipv6_address_on_ipv4_server_raises_gaierror() -> None:
    """An address of the wrong family raises socket.gaierror(EAI_ADDRFAMILY)."""
    exc = _assert_fails_without_leak(
        socket.gaierror, lambda: prefork.TCPServer(("::1", 0), UpperHandler)
    )
    assert exc.errno == socket.EAI_ADDRFAMILY


def test_path_address_on_tcp_server_raises_typeerror() -> None:
    """A string address for an AF_INET server raises TypeError and closes the socket."""
    _assert_fails_without_leak(TypeError, lambda: prefork.TCPServer("/tmp/x", UpperHandler))


def test_unsupported_address_family_raises_eafnosupport() -> None:
    """An address_family the kernel does not know raises OSError(EAFNOSUPPORT)."""

    class Server(prefork.TCPServer):
        address_family = 12345

    exc = _assert_fails_without_leak(OSError, lambda: Server((LOCALHOST, 0), UpperHandler))
    assert exc.errno == errno.EAFNOSUPPORT


def test_unix_path_in_missing_directory_raises_filenotfound() -> None:
    """A Unix socket path whose directory does not exist raises FileNotFoundError."""
    with short_tmpdir() as tmp:
        path = os.path.join(tmp, "missing", "s.sock")
        exc = _assert_fails_without_leak(
            FileNotFoundError, lambda: prefork.UnixStreamServer(path, UpperHandler)
        )
        assert exc.errno == errno.ENOENT


def test_unix_path_under_a_file_raises_notadirectory() -> None:
    """A Unix socket path below a regular file raises NotADirectoryError."""
    with short_tmpdir() as tmp:
        plain = os.path.join(tmp, "file")
        with open(plain, "w"):
            pass
        exc = _assert_fails_without_leak(
            NotADirectoryError,
            lambda: prefork.UnixDatagramServer(os.path.join(plain, "s"), UpperDatagramHandler),
        )
        assert exc.errno == errno.ENOTDIR


NOBODY = 65534


def _lowest_free_fd() -> int:
    """The fd number the next open() gets (works without access to /proc/self/fd)."""
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    return fd


def _bind_in_child(path: str, uid: int | None) -> dict[str, Any]:
    """Try to serve on ``path`` in a forked child (as ``uid`` if given); report the outcome.

    Root may create files in any directory, so the permission check needs an
    unprivileged process: the child drops to ``uid`` before binding.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            os.close(read_fd)
            if uid is not None:
                os.setgid(uid)
                os.setuid(uid)
            before = _lowest_free_fd()
            outcome: dict[str, Any] = {"raised": None}
            try:
                prefork.UnixStreamServer(path, UpperHandler).server_close()
            except OSError as exc:
                # Checked while the traceback (and so the server) is still alive:
                # the constructor itself must have closed the socket.
                leaked = _lowest_free_fd() != before
                outcome = {"raised": type(exc).__name__, "errno": exc.errno, "leaked": leaked}
            os.write(write_fd, repr(outcome).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        ready, _, _ = select.select([read_fd], [], [], TIMEOUT)
        assert ready, "the child did not report"
        report = os.read(read_fd, 4096).decode()
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report
    return dict(ast.literal_eval(report))


def test_unix_path_in_readonly_directory_raises_permissionerror() -> None:
    """A Unix socket path in a non-writable directory raises PermissionError, no fd leaks."""
    with short_tmpdir() as tmp:
        os.chmod(tmp, 0o555)
        try:
            uid = NOBODY if os.geteuid() == 0 else None
            outcome = _bind_in_child(os.path.join(tmp, "s"), uid)
        finally:
            os.chmod(tmp, 0o700)
    assert outcome == {"raised": "PermissionError", "errno": errno.EACCES, "leaked": False}


def test_unix_path_already_bound_raises_eaddrinuse() -> None:
    """Binding an existing Unix socket path raises OSError(EADDRINUSE)."""
    with short_tmpdir() as tmp:
        path = os.path.join(tmp, "s.sock")
        with closing_server(prefork.UnixStreamServer(path, UpperHandler)):
            exc = _assert_fails_without_leak(
                OSError, lambda: prefork.UnixStreamServer(path, UpperHandler)
            )
            assert exc.errno == errno.EADDRINUSE


def test_server_activate_failure_closes_socket() -> None:
    """If server_activate() raises, the constructor closes the socket and re-raises."""
    closed = []

    class Server(prefork.TCPServer):
        def server_activate(self) -> None:
            raise OSError(errno.EINVAL, "activation refused")

        def server_close(self) -> None:
            closed.append(True)
            super().server_close()

    exc = _assert_fails_without_leak(OSError, lambda: Server((LOCALHOST, 0), UpperHandler))
    assert exc.errno == errno.EINVAL
    assert closed == [True]


# --- UDP, Unix and IPv6 servers -------------------------------------------


def test_udp_server_replies_to_each_datagram() -> None:
    """A UDPServer hands each datagram to the handler and the reply reaches the client."""
    server = prefork.UDPServer((LOCALHOST, 0), UpperDatagramHandler)
    with serving(server):
        assert server.server_address[1] != 0
        assert server.socket.type == socket.SOCK_DGRAM
        for i in range(3):
            assert datagram_exchange(server.server_address, b"dg %d" % i) == b"DG %d" % i


def test_udp_max_packet_size_truncates_request() -> None:
    """get_request() reads at most ``max_packet_size`` bytes of a datagram."""

    class Handler(prefork.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            sock.sendto(b"%d:" % len(data) + data, self.client_address)

    class Server(prefork.UDPServer):
        max_packet_size = 16

    server = Server((LOCALHOST, 0), Handler)
    with serving(server):
        payload = bytes(range(100))
        assert datagram_exchange(server.server_address, payload) == b"16:" + payload[:16]


def test_udp_request_is_data_and_server_socket() -> None:
    """For datagram servers ``request`` is ``(data, socket)`` with the server's socket."""
    seen = []

    class Handler(prefork.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            seen.append(sock.getsockname() == self.server.server_address)
            sock.sendto(data[::-1], self.client_address)

    server = prefork.UDPServer((LOCALHOST, 0), Handler)
    with serving(server):
        assert datagram_exchange(server.server_address, b"abc") == b"cba"
    assert seen == [True]


def test_unix_stream_server() -> None:
    """UnixStreamServer serves on a filesystem path."""
    with short_tmpdir() as tmp:
        path = os.path.join(tmp, "stream.sock")
        server = prefork.UnixStreamServer(path, UpperHandler)
        with serving(server):
            assert server.server_address == path
            assert server.socket.family == socket.AF_UNIX
            reply = stream_exchange(path, b"unix stream", family=socket.AF_UNIX)
            assert reply == b"UNIX STREAM"


def test_unix_datagram_server() -> None:
    """UnixDatagramServer answers a client bound to its own path."""
    with short_tmpdir() as tmp:
        path = os.path.join(tmp, "dgram.sock")
        server = prefork.UnixDatagramServer(path, UpperDatagramHandler)
        with serving(server):
            assert server.server_address == path
            reply = datagram_exchange(
                path, b"unix dgram", family=socket.AF_UNIX, bind=os.path.join(tmp, "client")
            )
            assert reply == b"UNIX DGRAM"


@pytest.mark.skipif(not ipv6_available(), reason="IPv6 unavailable")
def test_ipv6_tcp_server() -> None:
    """A TCPServer with address_family AF_INET6 serves on ::1."""

    class Server(prefork.TCPServer):
        address_family = socket.AF_INET6

    server = Server(("::1", 0), UpperHandler)
    with serving(server):
        assert server.server_address[0] == "::1"
        reply = stream_exchange(server.server_address[:2], b"six", family=socket.AF_INET6)
        assert reply == b"SIX"


@pytest.mark.skipif(not ipv6_available(), reason="IPv6 unavailable")
def test_ipv6_udp_server() -> None:
    """A UDPServer with address_family AF_INET6 serves on ::1."""

    class Server(prefork.UDPServer):
        address_family = socket.AF_INET6

    server = Server(("::1", 0), UpperDatagramHandler)
    with serving(server):
        reply = datagram_exchange(server.server_address[:2], b"six", family=socket.AF_INET6)
        assert reply == b"SIX"
