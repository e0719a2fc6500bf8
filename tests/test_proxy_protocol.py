"""prefork.engine.proxy_protocol: PROXY headers v1 and v2 read from a real socket pair."""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterator

import pytest

from prefork.engine.proxy_protocol import (
    V2_SIGNATURE,
    ProxyHeaderError,
    ProxyHeaderReader,
    Read,
)

AFTER = b"GET / HTTP/1.1\r\n\r\n"


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    with server, client:
        yield server, client


def v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def inet4_body(source: str, destination: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv4Address(source).packed
        + ipaddress.IPv4Address(destination).packed
        + struct.pack("!HH", sport, dport)
    )


def read_all(reader: ProxyHeaderReader) -> Read:
    state = reader.read()
    assert state is not Read.WAITING
    return state


@pytest.mark.parametrize(
    ("header", "source"),
    [
        (b"PROXY TCP4 203.0.113.9 192.0.2.1 51234 443\r\n", ("203.0.113.9", 51234)),
        (b"PROXY TCP6 2001:db8::9 2001:db8::1 4000 443\r\n", ("2001:db8::9", 4000)),
        (b"PROXY UNKNOWN\r\n", None),
        (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", None),
        (v2(1, 0x11, inet4_body("198.51.100.7", "192.0.2.1", 1234, 80)), ("198.51.100.7", 1234)),
        (
            v2(1, 0x21, ipaddress.IPv6Address("2001:db8::7").packed * 2 + b"\x00\x10\x00\x50"),
            ("2001:db8::7", 16),
        ),
        (v2(0, 0x00, b""), None),  # LOCAL: a health check by the proxy itself
        (
            v2(1, 0x11, inet4_body("198.51.100.7", "192.0.2.1", 1, 2) + b"\x04\x00\x01x"),
            ("198.51.100.7", 1),
        ),  # TLVs after the addresses are skipped
        (v2(1, 0x31, b"\x00" * 216), None),  # a Unix socket pair: no client address
    ],
)
def test_headers_are_read_exactly_and_the_rest_stays_in_the_socket(
    pair: tuple[socket.socket, socket.socket], header: bytes, source: object
) -> None:
    server, client = pair
    client.sendall(header + AFTER)
    reader = ProxyHeaderReader(server)
    assert read_all(reader) is Read.DONE
    assert reader.source == source
    assert server.recv(100) == AFTER


def test_a_header_arriving_byte_by_byte(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    header = v2(1, 0x11, inet4_body("198.51.100.7", "192.0.2.1", 1234, 80))
    reader = ProxyHeaderReader(server)
    for byte in header[:-1]:
        client.sendall(bytes([byte]))
        assert reader.read() is Read.WAITING
    client.sendall(header[-1:] + AFTER)
    assert reader.read() is Read.DONE and reader.source == ("198.51.100.7", 1234)
    assert server.recv(100) == AFTER


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n\r\n",  # a client that did not come through the proxy
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # no CR
        b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY " + b"x" * 120,
        V2_SIGNATURE[:-1] + b"X" + b"\x21\x11\x00\x00",
        v2(2, 0x11, b""),  # an unknown command
        V2_SIGNATURE + b"\x11\x11\x00\x00",  # version 1 in a v2 header
        v2(1, 0x11, b"\x00" * 4),  # too short for two addresses and ports
    ],
)
def test_anything_else_is_refused(pair: tuple[socket.socket, socket.socket], data: bytes) -> None:
    server, client = pair
    client.sendall(data)
    with pytest.raises(ProxyHeaderError):
        ProxyHeaderReader(server).read()


def test_a_peer_closing_first(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    client.sendall(b"PROXY TCP4 ")
    client.close()
    reader = ProxyHeaderReader(server)
    assert reader.read() is Read.CLOSED
