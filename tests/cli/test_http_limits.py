"""``prefork --wsgi`` with gunicorn's request limits: at the limit served, one byte over not."""

from __future__ import annotations

import socket

import pytest
from engine.harness import DEADLINE, READY

pytestmark = pytest.mark.timeout(90)

LIMITS = (
    "--limit-request-line", 100, "--limit-request-fields", 5, "--limit-request-field-size", 50,
)  # fmt: skip


def exchange(address: tuple[str, int], head: bytes) -> tuple[int, dict[str, str]]:
    """Send a raw request head, read the answer to EOF: ``(status, headers)``."""
    with socket.create_connection(address, timeout=DEADLINE) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    fields = rest.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    headers = dict(field.split(": ", 1) for field in fields if field)
    return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}


def request(target_length: int, fields: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    """A GET whose request line is ``target_length`` bytes long, with ``fields`` after Host."""
    line = b"GET /" + b"a" * (target_length - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
    assert len(line) == target_length
    head = [line, b"Host: x", b"Connection: close", *fields]
    return b"\r\n".join(head) + b"\r\n\r\n"


def field_of(length: int) -> bytes:
    """A header line of exactly ``length`` bytes (without its line ending)."""
    line = b"X-Pad: " + b"p" * (length - len(b"X-Pad: "))
    assert len(line) == length
    return line


@pytest.fixture
def limited(start_command):
    server = start_command("--wsgi", "-w", 1, "-b", "127.0.0.1:0", *LIMITS, "myapp:wsgi_app")
    server.wait_for_line(READY)
    return server.address


def test_request_line_at_the_limit_is_served_one_byte_over_gets_414(limited) -> None:
    assert exchange(limited, request(100))[0] == 200
    status, headers = exchange(limited, request(101))
    assert status == 414
    assert headers["connection"] == "close"


def test_header_line_at_the_limit_is_served_one_byte_over_gets_431(limited) -> None:
    assert exchange(limited, request(20, [field_of(50)]))[0] == 200
    status, headers = exchange(limited, request(20, [field_of(51)]))
    assert status == 431
    assert headers["connection"] == "close"


def test_header_count_at_the_limit_is_served_one_more_gets_431(limited) -> None:
    # Host and Connection are two of the five.
    assert exchange(limited, request(20, [b"X-A: 1", b"X-B: 2", b"X-C: 3"]))[0] == 200
    status, headers = exchange(limited, request(20, [b"X-A: 1", b"X-B: 2", b"X-C: 3", b"X-D: 4"]))
    assert status == 431
    assert headers["connection"] == "close"


def test_gunicorn_defaults(start_command) -> None:
    """4094 bytes of request line (not the handler's own 8190), 8190 per header line."""
    server = start_command("--wsgi", "-w", 1, "-b", "127.0.0.1:0", "myapp:wsgi_app")
    server.wait_for_line(READY)
    assert exchange(server.address, request(4094))[0] == 200
    assert exchange(server.address, request(4095))[0] == 414
    assert exchange(server.address, request(20, [field_of(8190)]))[0] == 200
    assert exchange(server.address, request(20, [field_of(8191)]))[0] == 431


def test_zero_means_no_limit_for_the_sizes(start_command) -> None:
    server = start_command(
        "--wsgi", "-w", 1, "-b", "127.0.0.1:0", "--limit-request-line", 0,
        "--limit-request-field-size", 0, "myapp:wsgi_app",
    )  # fmt: skip
    server.wait_for_line(READY)
    assert exchange(server.address, request(20000, [field_of(20000)]))[0] == 200


def test_limits_from_the_environment(start_command) -> None:
    server = start_command(
        "--wsgi", "-w", 1, "-b", "127.0.0.1:0", "myapp:wsgi_app",
        env={"PREFORK_LIMIT_REQUEST_LINE": "100"},
    )  # fmt: skip
    server.wait_for_line(READY)
    assert exchange(server.address, request(100))[0] == 200
    assert exchange(server.address, request(101))[0] == 414


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--limit-request-fields", "32769"), ("--limit-request-line", "-1"),
     ("--limit-request-field-size", "x")],
)  # fmt: skip
def test_bad_limits_are_refused(app_dir, flag, value) -> None:
    from .harness import run_command

    result = run_command("--wsgi", flag, value, "myapp:wsgi_app", cwd=app_dir)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
