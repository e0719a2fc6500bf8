"""A bounded Python load generator: ``python -m bench.loadgen MODE --port P [options]``.

Used for the TCP and UDP echo loads, and for HTTP when ``wrk`` is not installed (or with
``--loadgen python``).  One process runs one ``epoll`` loop over ``--connections``
non-blocking sockets, each with exactly one request in flight (closed loop, like ``wrk``);
the harness starts several processes and merges their results.  Modes:

* ``http``: HTTP/1.1 keep-alive ``GET /``; a response with ``Connection: close`` is followed
  by a new connection, as ``wrk`` does;
* ``http-close``: one connection per request (the request carries ``Connection: close``);
* ``tcp``: a 64-byte message per round trip on persistent connections;
* ``udp``: a 64-byte datagram per round trip, one connected socket per slot; a datagram not
  answered within ``--timeout`` is counted as a timeout and sent again.

Bounded: it stops after ``--duration`` seconds or ``--requests`` answered requests, whichever
comes first, and answers still in flight then are not counted.  Latency runs from the moment
the request is written (as in ``wrk``) to the moment its last byte is read.  The result is one
JSON object on standard output: ``requests``, ``elapsed``, ``errors`` by kind and a latency
histogram (logarithmic buckets 1 % wide, see :func:`bucket`).
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import re
import select
import socket
import sys
import time
from collections import Counter
from typing import Any

MESSAGE = b"x" * 63 + b"\n"
"""The echo payload (TCP and UDP)."""

_LOG_STEP = math.log(1.01)
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r\n]*chunked", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:[^\r\n]*close", re.IGNORECASE)

MODES = ("http", "http-close", "tcp", "udp")


def bucket(seconds: float) -> int:
    """The histogram bucket of a latency: bucket ``i`` holds [1.01**i, 1.01**(i+1)) us."""
    return int(math.log(max(seconds, 1e-6) * 1e6) / _LOG_STEP)


def bucket_value(index: int) -> float:
    """A representative latency (seconds) for bucket ``index``: its geometric middle."""
    return 1e-6 * math.exp((index + 0.5) * _LOG_STEP)


def percentile(hist: dict[int, int], fraction: float) -> float | None:
    """The latency below which ``fraction`` of the requests in ``hist`` fall."""
    total = sum(hist.values())
    if not total:
        return None
    rank = fraction * total
    seen = 0
    for index in sorted(hist):
        seen += hist[index]
        if seen >= rank:
            return bucket_value(index)
    return bucket_value(max(hist))


def http_request(host: str, port: int, close: bool) -> bytes:
    """The request line and headers sent for every HTTP request."""
    connection = "close" if close else "keep-alive"
    return f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: {connection}\r\n\r\n".encode()


def http_response_end(buf: bytes | bytearray) -> tuple[int, int, bool] | None:
    """``(length, status, close)`` once ``buf`` holds a whole response, else ``None``."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = bytes(buf[: head_end + 2])
    try:
        status = int(head[9:12])
    except ValueError:
        status = 0
    close = bool(_CLOSE.search(head))
    match = _CONTENT_LENGTH.search(head)
    if match:
        end = head_end + 4 + int(match.group(1))
        return (end, status, close) if len(buf) >= end else None
    if _CHUNKED.search(head):
        last = buf.find(b"\r\n0\r\n\r\n", head_end)
        return (last + 7, status, close) if last >= 0 else None
    return (head_end + 4, status, close)


class Slot:
    """One connection (or UDP socket) with at most one request in flight."""

    __slots__ = ("buf", "connecting", "sent_at", "sock")

    def __init__(self, sock: socket.socket, connecting: bool) -> None:
        self.sock = sock
        self.connecting = connecting
        self.buf = bytearray()
        self.sent_at = 0.0


class LoadGenerator:
    """The event loop; see the module docstring."""

    def __init__(
        self,
        mode: str,
        host: str,
        port: int,
        connections: int,
        duration: float,
        requests: int = 0,
        timeout: float = 5.0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.address = (host, port)
        self.connections = connections
        self.duration = duration
        self.max_requests = requests
        self.timeout = timeout
        self.request = http_request(host, port, close=mode == "http-close")
        self.poller = select.epoll()
        self.slots: dict[int, Slot] = {}
        self.reopen_at: list[float] = []
        self.hist: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.answered = 0

    # -- connections -------------------------------------------------------------------

    def open(self) -> None:
        """Open one slot: a non-blocking connect, or a connected UDP socket."""
        kind = socket.SOCK_DGRAM if self.mode == "udp" else socket.SOCK_STREAM
        sock = socket.socket(socket.AF_INET, kind)
        sock.setblocking(False)
        if self.mode == "udp":
            sock.connect(self.address)
            slot = Slot(sock, connecting=False)
            self.slots[sock.fileno()] = slot
            self.poller.register(sock.fileno(), select.EPOLLIN)
            self.send(slot)
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(self.address)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self.errors["connect"] += 1
            self.reopen_at.append(time.monotonic() + 0.01)
            return
        slot = Slot(sock, connecting=True)
        self.slots[sock.fileno()] = slot
        self.poller.register(sock.fileno(), select.EPOLLOUT)

    def drop(self, slot: Slot, error: str | None, reopen_after: float = 0.0) -> None:
        """Close ``slot`` (counting ``error``) and open a replacement."""
        if error:
            self.errors[error] += 1
        fd = slot.sock.fileno()
        self.poller.unregister(fd)
        del self.slots[fd]
        slot.sock.close()
        if reopen_after:
            self.reopen_at.append(time.monotonic() + reopen_after)
        else:
            self.open()

    def send(self, slot: Slot) -> None:
        """Write the next request on ``slot``; start its latency clock."""
        payload = MESSAGE if self.mode in ("tcp", "udp") else self.request
        slot.buf.clear()
        slot.sent_at = time.monotonic()
        try:
            sent = slot.sock.send(payload)
        except OSError:
            sent = -1
        if sent != len(payload):
            if self.mode == "udp":
                self.errors["write"] += 1
                slot.sent_at = 0.0  # resent by the timeout sweep
            else:
                self.drop(slot, "write", reopen_after=0.01)

    # -- events ------------------------------------------------------------------------

    def on_writable(self, slot: Slot) -> None:
        """A pending connect finished: send the first request, or count the failure."""
        err = slot.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.drop(slot, "connect", reopen_after=0.01)
            return
        slot.connecting = False
        self.poller.modify(slot.sock.fileno(), select.EPOLLIN)
        self.send(slot)

    def on_readable(self, slot: Slot, now: float) -> None:
        """Read what arrived; on a whole answer, record it and send the next request."""
        try:
            data = slot.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            if self.mode == "udp":  # ICMP port unreachable: the server is not there (yet)
                self.errors["read"] += 1
                slot.sent_at = 0.0
                return
            self.drop(slot, "read", reopen_after=0.01)
            return
        if self.mode == "udp":
            if slot.sent_at:
                self.record(slot, now, ok=data == MESSAGE)
            self.send(slot)
            return
        if not data:
            self.drop(slot, "read", reopen_after=0.01)
            return
        slot.buf += data
        if self.mode == "tcp":
            if len(slot.buf) >= len(MESSAGE):
                self.record(slot, now, ok=bytes(slot.buf) == MESSAGE)
                self.send(slot)
            return
        end = http_response_end(slot.buf)
        if end is None:
            return
        length, status, close = end
        self.record(slot, now, ok=status == 200)
        if close or self.mode == "http-close" or length != len(slot.buf):
            self.drop(slot, None)
        else:
            self.send(slot)

    def record(self, slot: Slot, now: float, ok: bool) -> None:
        """Count one answered request and its latency."""
        self.answered += 1
        self.hist[bucket(now - slot.sent_at)] += 1
        slot.sent_at = 0.0
        if not ok:
            self.errors["status"] += 1

    def sweep(self, now: float) -> None:
        """Time out slow requests, reopen slots whose back-off has passed."""
        for slot in list(self.slots.values()):
            if slot.connecting:
                continue
            if self.mode == "udp" and not slot.sent_at:
                self.send(slot)
            elif slot.sent_at and now - slot.sent_at > self.timeout:
                if self.mode == "udp":
                    self.errors["timeout"] += 1
                    self.send(slot)
                else:
                    self.drop(slot, "timeout")
        due = [t for t in self.reopen_at if t <= now]
        if due:
            self.reopen_at = [t for t in self.reopen_at if t > now]
            for _ in due:
                self.open()

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Load the server for the duration; return the result."""
        start = time.monotonic()
        end = start + self.duration
        try:
            for _ in range(self.connections):
                self.open()
            last_sweep = start
            while True:
                now = time.monotonic()
                if now >= end or (self.max_requests and self.answered >= self.max_requests):
                    break
                for fd, mask in self.poller.poll(min(0.05, end - now)):
                    slot = self.slots.get(fd)
                    if slot is None:
                        continue
                    if slot.connecting:
                        self.on_writable(slot)
                    elif mask & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                        self.on_readable(slot, time.monotonic())
                now = time.monotonic()
                if now - last_sweep >= 0.05:
                    self.sweep(now)
                    last_sweep = now
            elapsed = time.monotonic() - start
        finally:
            for slot in self.slots.values():
                slot.sock.close()
            self.slots.clear()
            self.poller.close()
        return {
            "requests": self.answered,
            "elapsed": elapsed,
            "errors": dict(self.errors),
            "hist": dict(self.hist),
        }


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up the results of several load generator processes."""
    hist: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    for result in results:
        hist.update({int(k): v for k, v in result["hist"].items()})
        errors.update(result["errors"])
    return {
        "requests": sum(r["requests"] for r in results),
        "elapsed": max((r["elapsed"] for r in results), default=0.0),
        "errors": dict(errors),
        "hist": dict(hist),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--requests", type=int, default=0, help="stop after this many (0: no cap)")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    generator = LoadGenerator(
        args.mode,
        args.host,
        args.port,
        args.connections,
        args.duration,
        args.requests,
        args.timeout,
    )
    json.dump(generator.run(), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
