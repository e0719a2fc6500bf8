"""The access log and ``--forwarded-allow-ips``, through the real command."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
from pathlib import Path

import pytest
from engine.harness import DEADLINE, READY, wait_until

from cli.harness import run_command

pytestmark = pytest.mark.timeout(90)

ECHO_APP = """
def application(environ, start_response):
    body = f"{environ['REMOTE_ADDR']} {environ['wsgi.url_scheme']} {environ.get('HTTPS', '-')}"
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Served-By", "echo")])
    return [body.encode()]
"""

#: Apache's combined format, as gunicorn writes it by default.
COMBINED = re.compile(
    r"^127\.0\.0\.1 - (?P<user>\S+) \[\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] "
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<size>\d+|-) "(?P<referer>[^"]*)" '
    r'"(?P<agent>[^"]*)"$'
)


def fetch(address, path="/", headers=None):
    conn = http.client.HTTPConnection(*address, timeout=20)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


@pytest.fixture
def echo_app(app_dir: Path) -> Path:
    (app_dir / "echoapp.py").write_text(ECHO_APP)
    return app_dir


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_access_log_lines_in_the_combined_format_and_reopened_on_usr1(
    start_command, echo_app: Path
) -> None:
    log = echo_app / "access.log"
    server = start_command(
        "--wsgi", "-w", 1, "-b", "127.0.0.1:0", "--access-logfile", log, "echoapp:application"
    )
    server.wait_for_line(READY)
    fetch(
        server.address,
        "/path?x=1",
        {"User-Agent": "tester/1.0", "Referer": "http://example.test/", "Authorization":
         "Basic YWxpY2U6c2VjcmV0"},
    )  # fmt: skip
    wait_until(lambda: lines_of(log), DEADLINE, "an access log line", server.tail)
    (line,) = lines_of(log)
    match = COMBINED.match(line)
    assert match, line
    assert match["request"] == "GET /path?x=1 HTTP/1.1" and match["status"] == "200"
    assert match["user"] == "alice" and match["agent"] == "tester/1.0"
    assert match["referer"] == "http://example.test/"
    assert int(match["size"]) == len("127.0.0.1 http -")
    # logrotate: rename, then USR1; the next line goes to a new file at the old path.
    os.rename(log, echo_app / "access.log.1")
    mark = server.mark()
    server.send(signal.SIGUSR1)
    server.wait_for_line(r"master: reopened", since=mark)
    # The worker reopens when it sees the signal, a moment after the master: a request
    # until then still goes to the renamed file.
    requests = 1

    def reopened() -> bool:
        nonlocal requests
        requests += 1
        fetch(server.address, "/after")
        return bool(lines_of(log))

    wait_until(reopened, DEADLINE, "a line in the reopened access log", server.tail)
    assert '"GET /after HTTP/1.1" 200' in lines_of(log)[0]
    wait_until(
        lambda: len(lines_of(echo_app / "access.log.1")) + len(lines_of(log)) == requests,
        DEADLINE,
        f"{requests} access log lines, one per request, in the two files",
    )


def test_access_log_format_atoms(start_command, echo_app: Path) -> None:
    log = echo_app / "access.log"
    fmt = "%(m)s %(U)s %(q)s %(s)s %({x-request-id}i)s %({x-served-by}o)s %(D)s %(p)s %(z)s"
    server = start_command(
        "--wsgi", "-w", 1, "-b", "127.0.0.1:0", "--access-logfile", log,
        "--access-logformat", fmt, "echoapp:application",
    )  # fmt: skip
    server.wait_for_line(READY)
    fetch(server.address, "/a/b?c=d", {"X-Request-Id": "abc123"})
    wait_until(lambda: lines_of(log), DEADLINE, "an access log line", server.tail)
    method, path, query, status, request_id, served_by, micros, pid, unknown = lines_of(log)[
        0
    ].split()
    assert (method, path, query, status) == ("GET", "/a/b", "c=d", "200")
    assert (request_id, served_by, unknown) == ("abc123", "echo", "-")
    assert int(micros) >= 0 and re.fullmatch(r"<\d+>", pid)


def test_no_access_log_by_default(start_command, echo_app: Path) -> None:
    server = start_command("--wsgi", "-w", 1, "-b", "127.0.0.1:0", "echoapp:application")
    server.wait_for_line(READY)
    assert fetch(server.address, "/quiet")[0] == 200
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert not any("/quiet" in line.text for line in server.lines), server.tail()


def test_a_trusted_proxy_sets_the_client_address_and_scheme(start_command, echo_app) -> None:
    server = start_command("--wsgi", "-w", 1, "-b", "127.0.0.1:0", "echoapp:application")
    server.wait_for_line(READY)
    forwarded = {"X-Forwarded-For": "6.6.6.6, 203.0.113.9", "X-Forwarded-Proto": "https"}
    # The default trusts 127.0.0.1, where this client is.
    assert fetch(server.address, headers=forwarded) == (200, "203.0.113.9 https on")
    assert fetch(server.address) == (200, "127.0.0.1 http -")
    contradictory = {"X-Forwarded-Proto": "https", "X-Forwarded-Ssl": "off"}
    assert fetch(server.address, headers=contradictory)[0] == 400


def test_an_untrusted_peer_cannot_claim_an_address(start_command, echo_app) -> None:
    server = start_command(
        "--wsgi", "-w", 1, "-b", "127.0.0.1:0", "--forwarded-allow-ips", "10.0.0.0/8",
        "echoapp:application",
    )  # fmt: skip
    server.wait_for_line(READY)
    forwarded = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    assert fetch(server.address, headers=forwarded) == (200, "127.0.0.1 http -")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--forwarded-allow-ips", "127.0.0.1,10.0.0.300", "10.0.0.300"),
        ("--access-logformat", "%(h)d", "access_log_format"),
    ],
)
def test_bad_proxy_and_access_log_settings_are_one_line_errors(
    app_dir: Path, option: str, value: str, message: str
) -> None:
    result = run_command("--check-config", option, value, "myapp:application", cwd=app_dir)
    assert result.returncode == 2, result
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


PEER_APP = """
import prefork


class Peer(prefork.StreamRequestHandler):
    def handle(self):
        self.rfile.readline()
        self.wfile.write(f"{self.client_address[0]} {self.client_address[1]}\\n".encode())
"""

V1 = b"PROXY TCP4 203.0.113.9 127.0.0.1 40404 80\r\n"
V2 = (
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c"
    + bytes([198, 51, 100, 7, 127, 0, 0, 1])
    + (50505).to_bytes(2, "big")
    + (80).to_bytes(2, "big")
)


def exchange(address, data: bytes) -> bytes:
    """Send ``data``, then read until the server closes (a refused connection may be closed,
    even reset, before the client is done sending: that reads as nothing)."""
    received = b""
    with socket.create_connection(address, timeout=20) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            raise
        except OSError:
            pass  # closed or reset by the server
        return received


def test_proxy_protocol_gives_wsgi_and_stream_handlers_the_client_address(
    start_command, echo_app: Path
) -> None:
    (echo_app / "peerapp.py").write_text(PEER_APP)
    wsgi = start_command(
        "--wsgi", "-w", 1, "-b", "127.0.0.1:0", "--proxy-protocol", "echoapp:application"
    )
    stream = start_command("-w", 1, "-b", "127.0.0.1:0", "--proxy-protocol", "peerapp:Peer")
    wsgi.wait_for_line(READY)
    stream.wait_for_line(READY)
    request = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    assert exchange(wsgi.address, V1 + request).endswith(b"\r\n\r\n203.0.113.9 http -")
    assert exchange(wsgi.address, V2 + request).endswith(b"\r\n\r\n198.51.100.7 http -")
    assert exchange(stream.address, V1 + b"hi\n") == b"203.0.113.9 40404\n"
    assert exchange(stream.address, V2 + b"hi\n") == b"198.51.100.7 50505\n"
    # From a proxy the header is required: a bare request is refused, logged, and the
    # worker serves on.
    mark = stream.mark()
    assert exchange(stream.address, b"hi\n") == b""
    stream.wait_for_line("does not start with a PROXY header", since=mark)
    assert exchange(stream.address, b"PROXY UNKNOWN\r\nhi\n").startswith(b"127.0.0.1 ")


def test_proxy_protocol_is_not_asked_of_peers_outside_proxy_allow_from(
    start_command, echo_app: Path
) -> None:
    (echo_app / "peerapp.py").write_text(PEER_APP)
    server = start_command(
        "-w", 1, "-b", "127.0.0.1:0", "--proxy-protocol", "--proxy-allow-from", "10.0.0.0/8",
        "peerapp:Peer",
    )  # fmt: skip
    server.wait_for_line(READY)
    assert exchange(server.address, b"hi\n").startswith(b"127.0.0.1 ")
