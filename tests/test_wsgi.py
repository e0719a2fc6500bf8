"""prefork.http.wsgi: the HTTP/1.1 WSGI handler, over real sockets.

Servers listen on 127.0.0.1 port 0 and run ``serve_forever`` in a thread
(``tests.support.serving`` always shuts them down, closes and joins them).
Clients are ``http.client`` where it can express the request, raw sockets
where the bytes on the wire matter.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import logging
import os
import socket
import socketserver
import struct
import sys
import threading
import urllib.parse
import wsgiref.simple_server
import wsgiref.validate
from collections.abc import Iterator
from typing import Any, BinaryIO, NamedTuple

import psutil
import pytest
import wsgi_apps as apps
from support import LOCALHOST, TIMEOUT, connect, serving, short_tmpdir

import prefork
from prefork.engine.keepalive import drives_http_connections
from prefork.http.wsgi import FileWrapper, WSGIRequestHandler, WSGIServer, make_server


class Handler(WSGIRequestHandler):
    """The handler under test, with a socket timeout so no test can hang on a read."""

    timeout = TIMEOUT


class Server(prefork.ThreadingMixIn, WSGIServer):
    """A thread per connection; records the errors the handler reports."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.errors: list[BaseException] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        assert exc is not None
        self.errors.append(exc)


@contextlib.contextmanager
def running(app: Any, **attributes: Any) -> Iterator[Server]:
    """A :class:`Server` serving ``app`` from a thread for the duration of the block."""
    server = Server((LOCALHOST, 0), Handler)
    server.set_app(app)
    for name, value in attributes.items():
        setattr(server, name, value)
    with serving(server):
        yield server


@contextlib.contextmanager
def client(server: Any) -> Iterator[http.client.HTTPConnection]:
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=TIMEOUT)
    try:
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def raw(server: Any) -> Iterator[tuple[socket.socket, BinaryIO]]:
    """A raw connection and a buffered reader on it."""
    with connect(server.server_address[:2]) as sock, sock.makefile("rb") as reader:
        yield sock, reader


class Response(NamedTuple):
    version: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ",".join(values) if values else None

    def names(self) -> list[str]:
        return [k.lower() for k, _ in self.headers]


def read_response(reader: BinaryIO, *, head: bool = False) -> Response:
    """Parse one response off ``reader`` exactly (so that pipelined ones follow)."""
    status_line = reader.readline()
    assert status_line.endswith(b"\r\n"), f"no status line: {status_line!r}"
    version, status, _ = status_line.decode("latin-1").split(" ", 2)
    headers = []
    while (line := reader.readline()) != b"\r\n":
        assert line.endswith(b"\r\n"), f"truncated head: {line!r}"
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name, value.strip()))
    response = Response(version, int(status), headers, b"")
    code = int(status)
    if head or code < 200 or code in (204, 304):
        return response
    if (response.header("Transfer-Encoding") or "").lower() == "chunked":
        parts = []
        while True:
            size = int(reader.readline().split(b";")[0], 16)
            if not size:
                while reader.readline() != b"\r\n":
                    pass
                break
            parts.append(reader.read(size))
            assert reader.read(2) == b"\r\n"
        body = b"".join(parts)
    elif (length := response.header("Content-Length")) is not None:
        body = reader.read(int(length))
        assert len(body) == int(length), "body shorter than its Content-Length"
    else:
        body = reader.read()
    return response._replace(body=body)


def exchange(server: Any, data: bytes, count: int = 1) -> list[Response]:
    """Send ``data`` on a new connection, read ``count`` responses, then expect EOF."""
    with raw(server) as (sock, reader):
        sock.sendall(data)
        responses = [read_response(reader) for _ in range(count)]
        assert reader.read() == b"", "data after the last response"
        return responses


def get(server: Any, path: str, method: str = "GET", **kwargs: Any) -> tuple[Any, bytes]:
    with client(server) as conn:
        conn.request(method, path, **kwargs)
        response = conn.getresponse()
        return response, response.read()


# -- PEP 3333 conformance (wsgiref.validate) --------------------------------------------------


@pytest.mark.parametrize(
    ("app", "method", "path", "body", "expected"),
    [
        (apps.hello, "GET", "/", None, b"Hello, World!"),
        (apps.echo, "POST", "/echo", b"x" * 100_000, b"x" * 100_000),
        (apps.stream, "GET", "/?4", None, b"line 0\nline 1\nline 2\nline 3\n"),
        (apps.writer, "GET", "/", None, b"written twice and returned"),
        (apps.echo_lines, "POST", "/?readline", b"a\nbb\nccc", b'["a\\n", "bb\\n", "ccc"]'),
        (apps.echo_lines, "POST", "/?readline-sized", b"abcdef\n", b'["abcd", "ef\\n"]'),
        (apps.echo_lines, "POST", "/?readlines", b"a\nb\n", b'["a\\n", "b\\n"]'),
        (apps.echo_lines, "POST", "/?iterate", b"1\n2\n3", b'["1\\n", "2\\n", "3"]'),
        (apps.error_page, "GET", "/", None, b"custom error page"),
        (apps.bytesio_app(b"0123456789" * 500), "GET", "/", None, b"0123456789" * 500),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_validated_apps(app, method, path, body, expected):
    with running(wsgiref.validate.validator(app)) as server:
        response, data = get(server, path, method, body=body)
        assert data == expected
        assert response.status in (200, 503)
    assert server.errors == []


def test_validated_chunked_request_body():
    with running(wsgiref.validate.validator(apps.echo)) as server:
        (response,) = exchange(
            server,
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )
    assert (response.status, response.body) == (200, b"abc")
    assert server.errors == []


# -- connections ----------------------------------------------------------------------------


def test_keep_alive_serves_several_requests_on_one_connection():
    with running(apps.environ_dump) as server, client(server) as conn:
        ports = set()
        for n in range(5):
            conn.request("GET", f"/{n}")
            response = conn.getresponse()
            environ = json.loads(response.read())
            assert environ["PATH_INFO"] == f"/{n}"
            assert response.getheader("Connection") is None  # HTTP/1.1: persistent by default
            ports.add(environ["REMOTE_PORT"])
            sock = conn.sock
            assert sock is not None
        assert len(ports) == 1, "each request came on a new connection"


def test_pipelined_requests_are_answered_in_order():
    requests = (
        b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nsecond"
        b"GET /third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    with running(apps.environ_dump) as server:
        responses = exchange(server, requests, count=3)
    paths = [json.loads(r.body)["PATH_INFO"] for r in responses]
    assert paths == ["/first", "/second", "/third"]
    assert [r.status for r in responses] == [200, 200, 200]
    assert responses[-1].header("Connection") == "close"


def test_connection_close_is_honoured():
    with running(apps.hello) as server:
        (response,) = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert response.header("Connection") == "close"
    assert response.body == b"Hello, World!"


def test_http10_is_closed_after_each_response_by_default():
    with running(apps.hello) as server:
        (response,) = exchange(server, b"GET / HTTP/1.0\r\n\r\n")
    assert response.status == 200
    assert response.header("Connection") == "close"
    assert response.body == b"Hello, World!"


def test_http10_keep_alive_on_request():
    request = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    with running(apps.hello) as server, raw(server) as (sock, reader):
        sock.sendall(request)
        first = read_response(reader)
        sock.sendall(request)
        second = read_response(reader)
    assert first.header("Connection") == second.header("Connection") == "keep-alive"
    assert first.body == second.body == b"Hello, World!"


def test_http10_streamed_body_is_delimited_by_close():
    with running(apps.stream) as server:
        (response,) = exchange(server, b"GET /?3 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert response.header("Content-Length") is None
    assert response.header("Transfer-Encoding") is None
    assert response.header("Connection") == "close"
    assert response.body == b"line 0\nline 1\nline 2\n"


def test_empty_line_before_a_request_is_ignored():
    with running(apps.hello) as server:
        (response,) = exchange(server, b"\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert response.status == 200


def test_unread_small_body_is_drained_and_the_connection_kept():
    with running(apps.ignore_body) as server, client(server) as conn:
        for _ in range(3):
            conn.request("POST", "/", body=b"z" * 5000)
            response = conn.getresponse()
            assert response.read() == b"ignored"
            assert response.getheader("Connection") is None


def test_unread_large_body_closes_the_connection():
    with running(apps.ignore_body) as server, client(server) as conn:
        conn.request("POST", "/", body=b"z" * 200_000)
        response = conn.getresponse()
        assert response.read() == b"ignored"
        assert response.getheader("Connection") == "close"


# -- request bodies -------------------------------------------------------------------------


def test_chunked_request_body_with_extensions_and_trailers():
    request = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n"
        b"1;name=value\r\n,\r\n"
        b"A \r\n chunked!!\r\n"
        b"0\r\nX-Checksum: 123\r\nX-Other: 4\r\n\r\n"
        b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    with running(apps.echo) as server:
        first, second = exchange(server, request, count=2)
    assert first.body == b"hello, chunked!!"
    assert second.body == b""  # the next request was framed correctly
    assert server.errors == []


def test_large_chunked_request_body():
    data = os.urandom(300_000)
    with running(apps.echo) as server, client(server) as conn:
        conn.request("POST", "/", body=iter([data[:100_000], data[100_000:]]))  # chunked
        response = conn.getresponse()
        assert response.read() == data


def test_unread_chunked_body_is_drained():
    request = (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nabcd\r\n0\r\n\r\n"
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    with running(apps.ignore_body) as server:
        first, second = exchange(server, request, count=2)
    assert first.body == second.body == b"ignored"


def test_invalid_chunked_body_is_a_400():
    request = (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n"
    )
    with running(apps.echo) as server:
        (response,) = exchange(server, request)
    assert response.status == 400
    assert server.errors == []


def test_large_body_read_in_blocks():
    data = os.urandom(1_000_000)
    with running(apps.echo) as server:
        _, body = get(server, "/", "POST", body=data)
    assert body == data


@pytest.mark.parametrize(
    "head",
    [
        # The app reads it all with one read(): no allocation of the announced size.
        b"POST /?all HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000000000\r\n\r\n",
        b"POST /?all HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFF\r\n",
    ],
    ids=["length", "chunked"],
)
def test_client_closing_mid_body_is_quiet(head, caplog):
    caplog.set_level(logging.DEBUG, logger="prefork.wsgi")
    with running(apps.echo) as server:
        with raw(server) as (sock, reader):
            sock.sendall(head + b"only this much")
            sock.shutdown(socket.SHUT_WR)
            assert reader.read() == b""  # nothing to answer: the client is gone
        assert get(server, "/", "POST", body=b"next")[1] == b"next"
    assert server.errors == []
    assert any("client went away" in r.getMessage() for r in caplog.records)


def test_expect_100_continue_is_sent_when_the_app_reads():
    with running(apps.echo) as server, raw(server) as (sock, reader):
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        # The client waits for the 100 before sending its body (the socket's
        # timeout is the deadline).
        assert reader.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert reader.readline() == b"\r\n"
        sock.sendall(b"hello")
        response = read_response(reader)
        assert (response.status, response.body) == (200, b"hello")
        assert response.header("Connection") is None  # the connection stays usable
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_response(reader).status == 200


def test_expect_100_continue_not_sent_when_the_app_does_not_read():
    with running(apps.ignore_body) as server, raw(server) as (sock, reader):
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        response = read_response(reader)
        assert response.status == 200  # the final answer, no 100 before it
        assert response.header("Connection") == "close"
        assert reader.read() == b""


# -- responses ------------------------------------------------------------------------------


def test_chunked_response_for_a_streamed_body():
    with running(apps.stream) as server:
        response, body = get(server, "/?5")
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert response.getheader("Content-Length") is None
    assert body == b"".join(b"line %d\n" % n for n in range(5))


def test_list_body_gets_a_content_length():
    app = apps.responder("200 OK", apps.TEXT, [b"ab", b"cd"])
    with running(lambda e, s: list(app(e, s))) as server:
        response, body = get(server, "/")
    assert response.getheader("Content-Length") == "4"
    assert response.getheader("Transfer-Encoding") is None
    assert body == b"abcd"


def test_empty_body_gets_content_length_zero():
    with running(apps.responder("200 OK", apps.TEXT, [])) as server:
        response, body = get(server, "/")
    assert response.getheader("Content-Length") == "0"
    assert body == b""


def test_head_sends_the_get_headers_without_a_body():
    with running(apps.hello) as server, raw(server) as (sock, reader):
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = read_response(reader, head=True)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = read_response(reader)  # would fail if HEAD had sent a body
        assert reader.read() == b""
    assert head.status == 200
    assert head.header("Content-Length") == "13"
    assert response.body == b"Hello, World!"


def test_head_of_a_streamed_body():
    with running(apps.stream) as server, client(server) as conn:
        conn.request("HEAD", "/?3")
        response = conn.getresponse()
        assert response.read() == b""
        assert response.getheader("Transfer-Encoding") == "chunked"
        conn.request("GET", "/?2")
        assert conn.getresponse().read() == b"line 0\nline 1\n"


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
def test_no_body_statuses(status):
    app = apps.responder(status, [("ETag", '"x"')], [b"must not be sent"])
    with running(app) as server, raw(server) as (sock, reader):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        response = read_response(reader)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        again = read_response(reader)
        assert reader.read() == b""
    assert response.status == again.status == int(status[:3])
    assert "content-length" not in response.names()
    assert "transfer-encoding" not in response.names()


def test_app_content_length_is_never_exceeded():
    app = apps.responder("200 OK", [("Content-Length", "5")], [b"0123456789", b"more"])
    with running(app) as server, client(server) as conn:
        for _ in range(2):
            conn.request("GET", "/")
            response = conn.getresponse()
            assert response.read() == b"01234"
            assert response.getheader("Connection") is None


def test_short_body_closes_the_connection():
    app = apps.responder("200 OK", [("Content-Length", "10")], [b"01234"])
    with running(app) as server, raw(server) as (sock, reader):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = read_response(reader, head=True)
        assert head.header("Content-Length") == "10"
        assert reader.read() == b"01234"  # then EOF: the client knows it is incomplete


def test_hop_by_hop_headers_from_the_app_do_not_break_framing():
    app = apps.responder(
        "200 OK",
        [("Transfer-Encoding", "chunked"), ("Keep-Alive", "timeout=99"), ("X-Kept", "1")],
        [b"plain ", b"body"],
    )
    with running(app) as server, client(server) as conn:
        for _ in range(2):
            conn.request("GET", "/")
            response = conn.getresponse()
            assert response.read() == b"plain body"
            assert response.getheader("Keep-Alive") is None
            assert response.getheader("X-Kept") == "1"
            assert response.getheader("Transfer-Encoding") == "chunked"  # ours, once


def test_connection_close_from_the_app_is_honoured():
    app = apps.responder("200 OK", [("Connection", "close"), ("Content-Length", "2")], [b"ok"])
    with running(app) as server:
        (response,) = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.header("Connection") == "close"
    assert response.body == b"ok"


def test_date_and_server_are_added_unless_set():
    with running(apps.hello) as server:
        response, _ = get(server, "/")
    assert response.getheader("Server") == "prefork"
    assert response.getheader("Date", "").endswith(" GMT")
    app = apps.responder("200 OK", [("Server", "mine"), ("Date", "today")], [b"x"])
    with running(app) as server:
        response, _ = get(server, "/")
    assert response.headers.get_all("Server") == ["mine"]
    assert response.headers.get_all("Date") == ["today"]


def test_file_wrapper_with_a_real_file_uses_its_length(tmp_path):
    path = tmp_path / "data.bin"
    data = os.urandom(300_000)
    path.write_bytes(data)
    with running(apps.file_app(str(path))) as server, client(server) as conn:
        for offset in (0, 1000):
            server.set_app(apps.file_app(str(path), offset))
            conn.request("GET", "/")
            response = conn.getresponse()
            assert response.getheader("Content-Length") == str(len(data) - offset)
            assert response.read() == data[offset:]
        conn.request("HEAD", "/")
        response = conn.getresponse()
        assert response.getheader("Content-Length") == str(len(data) - 1000)
        assert response.read() == b""


def test_file_wrapper_iterates_and_closes():
    closed = []

    class Tracked(io.BytesIO):
        def close(self) -> None:
            closed.append(True)
            super().close()

    wrapper = FileWrapper(Tracked(b"abcdefg"), 3)
    assert list(wrapper) == [b"abc", b"def", b"g"]
    wrapper.close()
    assert closed == [True]


def test_access_log_is_off_by_default(capsys):
    with running(apps.hello) as server:
        get(server, "/quiet")
    assert "/quiet" not in capsys.readouterr().err
    with running(apps.hello, access_log=True) as server:
        get(server, "/loud")
    assert '"GET /loud HTTP/1.1" 200 13' in capsys.readouterr().err


# -- errors ---------------------------------------------------------------------------------


def test_app_exception_gives_500_and_the_server_goes_on():
    with running(apps.fail_before) as server:
        response, body = get(server, "/")
        assert response.status == 500
        assert response.getheader("Connection") == "close"
        assert body == b"Internal Server Error\n"
        server.set_app(apps.hello)
        response, body = get(server, "/")
        assert (response.status, body) == (200, b"Hello, World!")
    assert [str(e) for e in server.errors] == ["the application failed"]


def test_app_exception_after_headers_closes_the_connection():
    with running(apps.fail_after) as server, client(server) as conn:
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.status == 200
        with pytest.raises(http.client.IncompleteRead):
            response.read()
    assert [str(e) for e in server.errors] == ["the application failed mid-body"]


def test_exc_info_after_headers_reraises():
    with running(apps.late_exc_info) as server, client(server) as conn:
        conn.request("GET", "/")
        response = conn.getresponse()
        with pytest.raises(http.client.IncompleteRead):
            response.read()
    assert [str(e) for e in server.errors] == ["too late"]


@pytest.mark.parametrize(
    ("status", "headers", "error"),
    [
        (200, [("Content-Type", "text/plain")], TypeError),
        ("200", [], ValueError),
        ("200 OK", (("A", "b"),), TypeError),
        ("200 OK", [("A", 1)], TypeError),
        ("200 OK", [("Bad Name", "x")], ValueError),
        ("200 OK", [("A", "b\r\nInjected: yes")], ValueError),
    ],
)
def test_start_response_checks_its_arguments(status, headers, error):
    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response(status, headers)
        return [b"x"]

    with running(app) as server:
        response, _ = get(server, "/")
    assert response.status == 500
    assert [type(e) for e in server.errors] == [error]


def test_start_response_checks_survive_the_cache_of_checked_headers():
    """A status and headers that passed are looked up next time; what differs is checked."""
    responses = iter(
        [
            ("200 OK", [("A", "b")], None),
            ("200 OK", [("A", "b")], None),
            ("200 OK", [["A", "b"]], TypeError),  # equal text, but a list: no header
            ("200 OK", [("A", "b\r\nInjected: yes")], ValueError),
            ("200", [("A", "b")], ValueError),
            ("200", [("A", "b")], ValueError),  # a bad status is not remembered as good
            ("200 OK", [("A", "b")], None),
        ]
    )
    expected = []

    def app(environ: Any, start_response: Any) -> list[bytes]:
        status, headers, error = next(responses)
        expected.append(error)
        start_response(status, headers)
        return [b"x"]

    with running(app) as server:
        statuses = [get(server, "/")[0].status for _ in range(7)]
    assert statuses == [200 if e is None else 500 for e in expected]
    assert [type(e) for e in server.errors] == [e for e in expected if e is not None]


def test_str_body_is_an_error():
    with running(apps.responder("200 OK", apps.TEXT, ["text"])) as server:  # type: ignore[list-item]
        response, _ = get(server, "/")
    assert response.status == 500
    assert [type(e) for e in server.errors] == [TypeError]


def test_client_leaving_mid_response_is_quiet(caplog):
    endless = apps.Endless()
    caplog.set_level(logging.DEBUG, logger="prefork.wsgi")
    with running(endless) as server:
        with raw(server) as (sock, reader):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(reader, head=True).status == 200
            reader.read(1000)
            # Close with RST, as a client that gives up does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert endless.closed.wait(TIMEOUT), "the body's close() was not called"
        server.set_app(apps.hello)
        assert get(server, "/")[1] == b"Hello, World!"
    assert server.errors == []
    assert any("client went away" in r.getMessage() for r in caplog.records)


# -- malformed requests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % n for n in range(101)) + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\n\r\n", 400),
        (b"G\x01T / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX-Space : y\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX-A: a\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n", 400),
        (b"GET nothing HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.x\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    ],
    ids=lambda v: v if isinstance(v, int) else v[:40].decode("latin-1"),
)
def test_malformed_requests_are_rejected_and_closed(request_bytes, status):
    with running(apps.hello) as server:
        (response,) = exchange(server, request_bytes)
        assert response.status == status
        assert response.header("Connection") == "close"
        # The server is still fine.
        assert get(server, "/")[1] == b"Hello, World!"
    assert server.errors == []


def test_limits_are_inclusive():
    line = b"GET /" + b"a" * (8190 - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
    assert len(line) == 8190
    headers = b"".join(b"X-H%d: v\r\n" % n for n in range(98))  # + Host, Connection: 100
    request = line + b"\r\nHost: x\r\n" + headers + b"Connection: close\r\n\r\n"
    with running(apps.hello) as server:
        (response,) = exchange(server, request)
    assert response.status == 200


def test_eof_mid_request_is_quiet():
    with running(apps.hello) as server:
        with raw(server) as (sock, reader):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            sock.shutdown(socket.SHUT_WR)
            assert reader.read() == b""
        assert get(server, "/")[1] == b"Hello, World!"
    assert server.errors == []


# -- the environ ----------------------------------------------------------------------------


def dump(server: Any, request: bytes) -> dict[str, str]:
    (response,) = exchange(server, request)
    assert response.status == 200
    return json.loads(response.body)  # type: ignore[no-any-return]


def test_environ_of_a_get():
    with running(apps.environ_dump) as server:
        port = server.server_address[1]
        environ = dump(
            server,
            b"GET /caf%C3%A9/a%2Fb%20c?q=%20x&y=1#frag HTTP/1.1\r\nHost: example.com\r\n"
            b"Connection: close\r\n\r\n",
        )
    assert "CONTENT_TYPE" not in environ
    assert "CONTENT_LENGTH" not in environ
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["SCRIPT_NAME"] == ""
    assert environ["PATH_INFO"] == "/caf\u00c3\u00a9/a/b c"  # decoded bytes, as latin-1
    assert environ["PATH_INFO"].encode("latin-1").decode("utf-8") == "/café/a/b c"
    assert environ["QUERY_STRING"] == "q=%20x&y=1"
    assert environ["RAW_URI"] == "/caf%C3%A9/a%2Fb%20c?q=%20x&y=1#frag"
    assert environ["SERVER_NAME"] == LOCALHOST
    assert environ["SERVER_PORT"] == str(port)
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["REMOTE_ADDR"] == LOCALHOST
    assert environ["REMOTE_PORT"].isdigit()
    assert environ["HTTP_HOST"] == "example.com"
    assert environ["wsgi.version"] == "(1, 0)"
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.multithread"] == "True"
    assert environ["wsgi.multiprocess"] == "True"
    assert environ["wsgi.run_once"] == "False"
    assert environ["wsgi.input_terminated"] == "True"
    assert environ["wsgi.errors is sys.stderr"] == "True"
    assert environ["wsgi.file_wrapper"] == "FileWrapper"


def test_environ_of_a_post():
    with running(apps.environ_dump) as server:
        environ = dump(
            server,
            b"POST /form HTTP/1.0\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 3\r\n\r\na=1",
        )
    assert environ["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert environ["CONTENT_LENGTH"] == "3"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert "HTTP_CONTENT_TYPE" not in environ
    assert "HTTP_CONTENT_LENGTH" not in environ


def test_absolute_form_target():
    with running(apps.environ_dump) as server:
        environ = dump(
            server, b"GET http://example.com/p/q?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n"
        )
    assert (environ["PATH_INFO"], environ["QUERY_STRING"]) == ("/p/q", "x=1")


def test_duplicate_headers_are_joined():
    with running(apps.environ_dump) as server:
        environ = dump(
            server,
            b"GET / HTTP/1.1\r\nX-Dup: a\r\nAccept: text/html\r\nx-dup: b\r\nX-DUP:  c \r\n"
            b"Connection: close\r\n\r\n",
        )
    assert environ["HTTP_X_DUP"] == "a,b,c"
    assert environ["HTTP_ACCEPT"] == "text/html"


def test_headers_with_underscores_are_dropped():
    with running(apps.environ_dump) as server:
        environ = dump(
            server,
            b"GET / HTTP/1.1\r\nX-Forwarded-For: 10.0.0.1\r\nX_Forwarded_For: 6.6.6.6\r\n"
            b"Content_Length: 99\r\nConnection: close\r\n\r\n",
        )
    assert environ["HTTP_X_FORWARDED_FOR"] == "10.0.0.1"
    assert "CONTENT_LENGTH" not in environ


def test_header_values_are_latin1():
    with running(apps.environ_dump) as server:
        environ = dump(
            server, b"GET / HTTP/1.1\r\nX-Name: caf\xc3\xa9\r\nConnection: close\r\n\r\n"
        )
    assert environ["HTTP_X_NAME"].encode("latin-1").decode("utf-8") == "café"


# -- Flask ----------------------------------------------------------------------------------

IGNORED = {"date", "server", "connection", "transfer-encoding", "keep-alive"}


def comparable(headers: Any) -> list[tuple[str, str]]:
    return sorted((k.lower(), v) for k, v in headers if k.lower() not in IGNORED)


FLASK_REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/json?a=1&b=2", {}),
    ("POST", "/json", {"body": b'{"x": [1, 2]}', "ct": "application/json"}),
    (
        "POST",
        "/form",
        {
            "body": urllib.parse.urlencode([("name", "Zoë"), ("tag", "a"), ("tag", "b")]).encode(),
            "ct": "application/x-www-form-urlencoded",
        },
    ),
    ("GET", "/stream", {}),
    ("GET", "/redirect", {}),
    ("GET", "/cookie", {"cookie": "flavour=ginger"}),
    ("GET", "/missing", {}),
    ("POST", "/stream", {"body": b"", "ct": "text/plain"}),
    ("HEAD", "/json", {}),
]


def test_flask_answers_as_its_test_client_expects():
    pytest.importorskip("flask")
    app = apps.make_flask_app()
    with running(app) as server, client(server) as conn:
        for method, path, options in FLASK_REQUESTS:
            test_client = app.test_client()
            headers = {}
            if "ct" in options:
                headers["Content-Type"] = options["ct"]
            if "cookie" in options:
                headers["Cookie"] = options["cookie"]
                name, _, value = options["cookie"].partition("=")
                test_client.set_cookie(name, value)  # it ignores a Cookie header
            body = options.get("body")
            expected = test_client.open(path, method=method, data=body, headers=headers)
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            label = f"{method} {path}"
            assert response.status == expected.status_code, label
            assert comparable(response.getheaders()) == comparable(expected.headers), label
            assert data == expected.get_data(), label
            assert conn.sock is not None, f"{label}: the connection was closed"
    assert server.errors == []


def test_flask_streaming_response_is_chunked():
    pytest.importorskip("flask")
    with running(apps.make_flask_app()) as server:
        response, body = get(server, "/stream")
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert body == b"".join(b"row %d\n" % n for n in range(5))


# -- other servers --------------------------------------------------------------------------


class StdlibServer(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
    daemon_threads = False
    block_on_close = True


def test_under_the_stdlib_server():
    server = StdlibServer((LOCALHOST, 0), Handler)
    server.set_app(apps.environ_dump)
    with serving(server), client(server) as conn:
        for n in range(3):
            conn.request("GET", f"/{n}")
            environ = json.loads(conn.getresponse().read())
            assert environ["PATH_INFO"] == f"/{n}"
            assert "CONTENT_TYPE" not in environ  # wsgiref's own handler would add one


class UnixServer(prefork.ThreadingUnixStreamServer):
    application = staticmethod(apps.environ_dump)


def test_unix_socket_server_names_come_from_host():
    with short_tmpdir() as tmp:
        server = UnixServer(os.path.join(tmp, "s"), Handler)
        with serving(server), connect(server.server_address, socket.AF_UNIX) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: example.com:8080\r\nConnection: close\r\n\r\n")
            with sock.makefile("rb") as reader:
                environ = json.loads(read_response(reader).body)
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("example.com", "8080")
    assert environ["REMOTE_ADDR"] == ""
    assert "REMOTE_PORT" not in environ


def test_make_server():
    server = make_server(LOCALHOST, 0, apps.hello, handler_class=Handler)
    with serving(server):
        assert get(server, "/")[1] == b"Hello, World!"
    assert type(server) is WSGIServer
    assert server.get_app() is apps.hello
    assert server.allow_reuse_address


class PreforkWSGIServer(prefork.PreforkMixIn, WSGIServer):
    workers = 2
    threads = 2
    graceful_timeout = 5.0


@contextlib.contextmanager
def serving_prefork(server: Any) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, name="serve_forever")
    thread.start()
    try:
        yield
    finally:
        try:
            server.shutdown()
        finally:
            server.server_close()
            thread.join(TIMEOUT)
    assert not thread.is_alive(), "serve_forever() did not return"


@pytest.mark.timeout(60)
def test_prefork_workers_serve_flask_with_keep_alive():
    pytest.importorskip("flask")
    me = psutil.Process()
    before = {child.pid for child in me.children(recursive=True)}
    server = PreforkWSGIServer((LOCALHOST, 0), WSGIRequestHandler)
    server.set_app(apps.make_flask_app())
    assert drives_http_connections(server)  # the worker parks idle connections itself
    answered_by = set()
    with serving_prefork(server):
        for _ in range(4):
            with client(server) as conn:
                pids = set()
                sockets = set()
                for _ in range(5):
                    conn.request("GET", "/pid")
                    response = conn.getresponse()
                    assert response.status == 200
                    pids.add(int(response.read()))
                    sockets.add(id(conn.sock))
                assert len(sockets) == 1, "the connection was not kept alive"
                assert len(pids) == 1, "one connection is served by one worker"
                answered_by |= pids
                conn.request(
                    "POST", "/json", body=b"[1]", headers={"Content-Type": "application/json"}
                )
                assert json.loads(conn.getresponse().read())["received"] == [1]
        workers = {child.pid for child in me.children()} - before
        assert os.getpid() not in answered_by
        assert answered_by <= workers
    assert server.socket.fileno() == -1
