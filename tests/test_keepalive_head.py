"""keepalive.head_complete: when the loop has gathered a whole request head."""

from __future__ import annotations

import pytest

from prefork.engine.keepalive import MAX_HEAD, head_complete


@pytest.mark.parametrize(
    ("data", "complete"),
    [
        (b"", False),
        (b"GET / HTTP/1.1\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: x\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTT", True),  # a pipelined one begins
        (b"GET / HTTP/1.0\n\n", True),  # bare LF line endings
        (b"GET /\r\n", True),  # HTTP/0.9: the request line is the whole request
        (b"GET /", False),
        (b"GET / HTTP/1.1", False),
        (b"\r\n", False),  # an empty line before a request: not a request line
        (bytearray(b"GET / HTTP/1.1\r\n\r\n"), True),
    ],
)
def test_head_complete(data: bytes, complete: bool) -> None:
    assert head_complete(data) is complete


def test_a_request_line_past_max_head_is_not_taken_for_http09() -> None:
    assert not head_complete(b"GET /" + b"a" * MAX_HEAD + b"\n")
