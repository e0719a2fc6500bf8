"""Request handlers: BaseRequestHandler, StreamRequestHandler, DatagramRequestHandler."""

from __future__ import annotations

import array
import io
import os
import socket
import sys
import threading
from typing import Any

import pytest
from support import (
    LOCALHOST,
    TIMEOUT,
    connect,
    datagram_exchange,
    read_until_closed,
    recv_all,
    serving,
    short_tmpdir,
    stream_exchange,
    wait_for,
)

import prefork


class ErrorRecordingTCPServer(prefork.TCPServer):
    """A TCP server that records handler exceptions instead of printing them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.errors: list[BaseException] = []
        self.error_seen = threading.Event()
        super().__init__(*args, **kwargs)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        assert exc is not None
        self.errors.append(exc)
        self.error_seen.set()


def tcp(handler: type) -> ErrorRecordingTCPServer:
    """A TCP server on 127.0.0.1 port 0 for ``handler``."""
    return ErrorRecordingTCPServer((LOCALHOST, 0), handler)


# --- BaseRequestHandler ---------------------------------------------------


def test_base_handler_attributes_and_call_order() -> None:
    """The constructor sets request/client_address/server, then setup, handle, finish."""
    seen: dict[str, Any] = {}

    class Handler(prefork.BaseRequestHandler):
        def setup(self) -> None:
            seen["order"] = ["setup"]
            seen["attrs"] = (self.request, self.client_address, self.server)

        def handle(self) -> None:
            seen["order"].append("handle")
            self.request.sendall(b"hi")

        def finish(self) -> None:
            seen["order"].append("finish")

    server = tcp(Handler)
    with serving(server), connect(server.server_address) as sock:
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"hi"
        client = sock.getsockname()
    request, client_address, srv = seen["attrs"]
    assert seen["order"] == ["setup", "handle", "finish"]
    assert isinstance(request, socket.socket)
    assert client_address == client
    assert srv is server


def test_base_handler_default_methods_do_nothing() -> None:
    """The default setup/handle/finish are no-ops: the client just sees EOF."""
    server = tcp(prefork.BaseRequestHandler)
    with serving(server):
        assert read_until_closed(server.server_address) == b""
    assert server.errors == []


def test_finish_runs_even_when_handle_raises() -> None:
    """finish() runs after a failing handle(), and the error reaches handle_error()."""
    finished = []

    class Handler(prefork.BaseRequestHandler):
        def handle(self) -> None:
            raise KeyError("in handle")

        def finish(self) -> None:
            finished.append(True)

    server = tcp(Handler)
    with serving(server):
        assert stream_exchange(server.server_address, b"") == b""
        assert server.error_seen.wait(TIMEOUT)
    assert finished == [True]
    assert isinstance(server.errors[0], KeyError)


def test_finish_not_called_when_setup_raises() -> None:
    """If setup() raises, neither handle() nor finish() runs."""
    called = []

    class Handler(prefork.BaseRequestHandler):
        def setup(self) -> None:
            raise RuntimeError("in setup")

        def handle(self) -> None:
            called.append("handle")

        def finish(self) -> None:
            called.append("finish")

    server = tcp(Handler)
    with serving(server):
        assert stream_exchange(server.server_address, b"") == b""
        assert server.error_seen.wait(TIMEOUT)
    assert called == []
    assert isinstance(server.errors[0], RuntimeError)


# --- StreamRequestHandler -------------------------------------------------


def test_stream_handler_rfile_readline_and_wfile_write() -> None:
    """rfile reads lines from the connection and wfile writes back to it."""

    class Handler(prefork.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                self.wfile.write(b"> " + line)

    server = tcp(Handler)
    with serving(server):
        reply = stream_exchange(server.server_address, b"one\ntwo\nthree\n")
    assert reply == b"> one\n> two\n> three\n"
    assert server.errors == []


def test_stream_handler_connection_is_request() -> None:
    """``connection`` is the request socket; rfile/wfile are readable/writable."""
    seen: dict[str, Any] = {}

    class Handler(prefork.StreamRequestHandler):
        def handle(self) -> None:
            seen["same"] = self.connection is self.request
            seen["rfile"] = self.rfile.readable()
            seen["wfile"] = self.wfile.writable()
            seen["timeout"] = self.connection.gettimeout()
            seen["nodelay"] = self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    server = tcp(Handler)
    with serving(server):
        stream_exchange(server.server_address, b"")
    assert seen == {"same": True, "rfile": True, "wfile": True, "timeout": None, "nodelay": 0}


def test_stream_handler_defaults() -> None:
    """Documented defaults: buffered reads, unbuffered writes, no timeout, Nagle on."""
    assert prefork.StreamRequestHandler.rbufsize == -1
    assert prefork.StreamRequestHandler.wbufsize == 0
    assert prefork.StreamRequestHandler.timeout is None
    assert prefork.StreamRequestHandler.disable_nagle_algorithm is False


def test_unbuffered_wfile_sends_each_write_and_returns_byte_count() -> None:
    """With wbufsize=0, wfile.write() sends at once and returns the number of bytes."""
    results: dict[str, Any] = {}
    go_on = threading.Event()

    class Handler(prefork.StreamRequestHandler):
        def handle(self) -> None:
            results["first"] = self.wfile.write(b"hello")
            # The client reads "hello" before we continue: no flush was needed.
            go_on.wait(TIMEOUT)
            results["ints"] = self.wfile.write(array.array("i", [1, 2, 3]))
            results["view"] = self.wfile.write(memoryview(b"abcdef")[2:])
            results["writable"] = self.wfile.writable()
            results["fileno"] = self.wfile.fileno() == self.connection.fileno()
            results["is_buffered_writer"] = isinstance(self.wfile, io.BufferedWriter)

    server = tcp(Handler)
    with serving(server), connect(server.server_address) as sock:
        got = b""
        while len(got) < 5:
            got += sock.recv(5 - len(got))
        assert got == b"hello"
        go_on.set()
        rest = recv_all(sock)
    assert rest == array.array("i", [1, 2, 3]).tobytes() + b"cdef"
    assert results == {
        "first": 5,
        "ints": 3 * array.array("i").itemsize,
        "view": 4,
        "writable": True,
        "fileno": True,
        "is_buffered_writer": False,
    }


def test_buffered_wfile_holds_data_until_flush_or_finish() -> None:
    """With wbufsize>0 writes are buffered; finish() flushes what is left."""
    flushed_seen = threading.Event()
    release = threading.Event()

    class Handler(prefork.StreamRequestHandler):
        wbufsize = 1 << 16

        def handle(self) -> None:
            self.wfile.write(b"buffered-")
            # Still in the buffer: tell the client to check it received nothing.
            self.connection.sendall(b"#")
            flushed_seen.wait(TIMEOUT)
            self.wfile.flush()
            release.wait(TIMEOUT)
            self.wfile.write(b"tail")

    server = tcp(Handler)
    with serving(server), connect(server.server_address) as sock:
        assert sock.recv(100) == b"#", "buffered write was sent before flush()"
        flushed_seen.set()
        got = b""
        while len(got) < len(b"buffered-"):
            got += sock.recv(100)
        assert got == b"buffered-"
        release.set()
        assert recv_all(sock) == b"tail"


def test_finish_flushes_buffered_wfile_after_handle_raises() -> None:
    """finish() flushes buffered output even when handle() failed."""

    class Handler(prefork.StreamRequestHandler):
        wbufsize = 4096

        def handle(self) -> None:
            self.wfile.write(b"partial reply")
            raise ValueError("after writing")

    server = tcp(Handler)
    with serving(server):
        assert stream_exchange(server.server_address, b"") == b"partial reply"
        assert server.error_seen.wait(TIMEOUT)
    assert isinstance(server.errors[0], ValueError)


@pytest.mark.parametrize("rbufsize", [0, -1, 4096])
def test_rbufsize_controls_read_buffering(rbufsize: int) -> None:
    """rbufsize=0 gives an unbuffered rfile; otherwise rfile reads ahead into a buffer."""
    seen: dict[str, Any] = {}

    class Handler(prefork.StreamRequestHandler):
        def handle(self) -> None:
            seen["first"] = self.rfile.read(1)
            seen["buffered"] = isinstance(self.rfile, io.BufferedReader)
            # What the rfile did not consume is still readable from the socket.
            self.connection.settimeout(0)
            try:
                seen["left"] = self.connection.recv(100)
            except BlockingIOError:
                seen["left"] = b""

    Handler.rbufsize = rbufsize
    server = tcp(Handler)
    with serving(server), connect(server.server_address) as sock:
        sock.sendall(b"abcdef")
        assert recv_all(sock) == b""
    assert server.errors == []
    assert seen["first"] == b"a"
    if rbufsize == 0:
        assert seen == {"first": b"a", "buffered": False, "left": b"bcdef"}
    else:
        assert seen == {"first": b"a", "buffered": True, "left": b""}


def test_stream_handler_timeout_on_silent_client() -> None:
    """A handler ``timeout`` makes a read from a silent client fail; errors are handled."""
    finished = threading.Event()
    seen: dict[str, Any] = {}

    class Handler(prefork.StreamRequestHandler):
        timeout = 0.1

        def handle(self) -> None:
            seen["timeout"] = self.connection.gettimeout()
            self.rfile.readline()

        def finish(self) -> None:
            super().finish()
            seen["closed"] = (self.rfile.closed, self.wfile.closed)
            finished.set()

    server = tcp(Handler)
    with serving(server), connect(server.server_address) as sock:
        # Send nothing; the server must give up and close the connection.
        assert recv_all(sock) == b""
        assert server.error_seen.wait(TIMEOUT), "handle_error() not called on timeout"
        assert finished.wait(TIMEOUT)
    assert isinstance(server.errors[0], TimeoutError)
    assert seen == {"timeout": 0.1, "closed": (True, True)}


def test_server_serves_next_request_after_handler_timeout() -> None:
    """A timed-out handler does not stop the server from serving the next client."""

    class Handler(prefork.StreamRequestHandler):
        timeout = 0.1

        def handle(self) -> None:
            self.wfile.write(self.rfile.readline().upper())

    server = tcp(Handler)
    with serving(server):
        with connect(server.server_address) as silent:
            assert recv_all(silent) == b""
        assert stream_exchange(server.server_address, b"next\n") == b"NEXT\n"
    assert len(server.errors) == 1


@pytest.mark.parametrize("disable", [True, False])
def test_disable_nagle_algorithm_sets_tcp_nodelay(disable: bool) -> None:
    """disable_nagle_algorithm=True sets TCP_NODELAY on the connection."""
    seen = []

    class Handler(prefork.StreamRequestHandler):
        disable_nagle_algorithm = disable

        def handle(self) -> None:
            opt = self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            seen.append(bool(opt))
            self.wfile.write(b"ok")

    server = tcp(Handler)
    with serving(server):
        assert stream_exchange(server.server_address, b"") == b"ok"
    assert seen == [disable]


def test_stream_handler_large_payload_round_trip() -> None:
    """A payload larger than socket buffers streams through rfile and wfile intact."""
    payload = os.urandom(1 << 20)

    class Handler(prefork.StreamRequestHandler):
        def handle(self) -> None:
            data = self.rfile.read()
            self.wfile.write(data[::-1])

    server = tcp(Handler)
    with serving(server):
        assert stream_exchange(server.server_address, payload) == payload[::-1]


def test_stream_handler_on_unix_socket() -> None:
    """StreamRequestHandler works on a Unix stream server too."""

    class Handler(prefork.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline().upper())

    with short_tmpdir() as tmp:
        path = os.path.join(tmp, "s")
        server = prefork.UnixStreamServer(path, Handler)
        with serving(server):
            assert stream_exchange(path, b"unix\n", family=socket.AF_UNIX) == b"UNIX\n"


# --- DatagramRequestHandler -----------------------------------------------


class EchoInfoHandler(prefork.DatagramRequestHandler):
    """Reply with the packet, whether ``socket`` is the server's, and rfile's type."""

    def handle(self) -> None:
        data = self.rfile.read()
        assert data == self.packet
        assert self.socket is self.server.socket
        assert isinstance(self.rfile, io.BytesIO)
        self.wfile.write(b"got:")
        self.wfile.write(data)


def test_datagram_handler_udp() -> None:
    """rfile holds the datagram; wfile's contents are sent back to client_address."""
    server = prefork.UDPServer((LOCALHOST, 0), EchoInfoHandler)
    with serving(server):
        assert datagram_exchange(server.server_address, b"ping") == b"got:ping"
        assert datagram_exchange(server.server_address, b"pong") == b"got:pong"


def test_datagram_handler_sends_empty_reply_when_nothing_written() -> None:
    """finish() sends the wfile contents even when empty (an empty datagram)."""
    server = prefork.UDPServer((LOCALHOST, 0), prefork.DatagramRequestHandler)
    with serving(server):
        assert datagram_exchange(server.server_address, b"anything") == b""


def test_datagram_handler_rfile_readline() -> None:
    """rfile is file-like: readline() splits the datagram's lines."""

    class Handler(prefork.DatagramRequestHandler):
        def handle(self) -> None:
            first = self.rfile.readline()
            second = self.rfile.readline()
            self.wfile.write(second + first)

    server = prefork.UDPServer((LOCALHOST, 0), Handler)
    with serving(server):
        assert datagram_exchange(server.server_address, b"a\nb\n") == b"b\na\n"


def test_datagram_handler_replies_to_the_right_client() -> None:
    """Replies go to each datagram's own sender."""
    server = prefork.UDPServer((LOCALHOST, 0), EchoInfoHandler)
    with serving(server):
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
        try:
            for i, sock in enumerate(socks):
                sock.settimeout(TIMEOUT)
                sock.sendto(b"client %d" % i, server.server_address)
            for i, sock in enumerate(socks):
                assert sock.recv(100) == b"got:client %d" % i
        finally:
            for sock in socks:
                sock.close()


def test_datagram_handler_unix() -> None:
    """DatagramRequestHandler on a Unix datagram server replies to the client's path."""
    with short_tmpdir() as tmp:
        path = os.path.join(tmp, "d")
        server = prefork.UnixDatagramServer(path, EchoInfoHandler)
        with serving(server):
            client_path = os.path.join(tmp, "c")
            reply = datagram_exchange(path, b"unix", family=socket.AF_UNIX, bind=client_path)
            assert reply == b"got:unix"


def test_datagram_handler_error_is_handled_and_server_continues() -> None:
    """A failing datagram handler reaches handle_error(); later datagrams are served."""
    errors = []

    class Handler(prefork.DatagramRequestHandler):
        def handle(self) -> None:
            if self.packet == b"bad":
                raise ValueError("bad packet")
            self.wfile.write(self.packet.upper())

    class Server(prefork.UDPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            errors.append(sys.exc_info()[0])

    server = Server((LOCALHOST, 0), Handler)
    with serving(server):
        # finish() still runs and sends whatever was written: nothing.
        assert datagram_exchange(server.server_address, b"bad") == b""
        assert datagram_exchange(server.server_address, b"good") == b"GOOD"
        wait_for(lambda: errors, message="handle_error()")
    assert errors == [ValueError]
