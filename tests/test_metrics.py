"""Prometheus metrics: the text exposition, and the endpoint serving it from a selector loop."""

from __future__ import annotations

import collections
import contextlib
import http.client
import math
import os
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest
from support import TIMEOUT, ipv6_available, short_tmpdir, slot_view, wait_for

from prefork.engine import metrics
from prefork.engine.metrics import MetricsEndpoint, render
from prefork.engine.process import Cause
from prefork.engine.scoreboard import Scoreboard, WorkerState
from prefork.errors import ConfigError

# -- a parser for the text exposition format 0.0.4 --------------------------------------------

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


@dataclass
class Family:
    name: str
    type: str = "untyped"
    help: str | None = None
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def value(self, **labels: str) -> float:
        """The value of the one sample with exactly these labels."""
        found = [value for have, value in self.samples if have == labels]
        assert len(found) == 1, f"{self.name}{labels}: {self.samples}"
        return found[0]

    def by(self, label: str) -> dict[str, float]:
        return {labels[label]: value for labels, value in self.samples}


def _unescape(text: str, escapes: dict[str, str]) -> str:
    out, chars = [], iter(text)
    for char in chars:
        if char == "\\":
            following = next(chars, "")
            if following not in escapes:
                raise ValueError(f"bad escape \\{following} in {text!r}")
            out.append(escapes[following])
        else:
            out.append(char)
    return "".join(out)


def _parse_labels(text: str, pos: int) -> tuple[dict[str, str], int]:
    """Labels from ``text[pos]`` (just after ``{``); returns them and the position after ``}``."""
    labels: dict[str, str] = {}
    while True:
        if text[pos] == "}":
            return labels, pos + 1
        match = _LABEL_NAME.match(text, pos)
        if not match:
            raise ValueError(f"bad label name at {text[pos:]!r}")
        name = match.group()
        pos = match.end()
        if text[pos : pos + 2] != '="':
            raise ValueError(f'expected =" at {text[pos:]!r}')
        pos += 2
        raw = []
        while text[pos] != '"':
            if text[pos] == "\\":
                raw.append(text[pos : pos + 2])
                pos += 2
            else:
                raw.append(text[pos])
                pos += 1
        pos += 1
        if name in labels:
            raise ValueError(f"label {name} twice")
        labels[name] = _unescape("".join(raw), {"\\": "\\", '"': '"', "n": "\n"})
        if text[pos] == ",":
            pos += 1
        elif text[pos] != "}":
            raise ValueError(f"expected , or }} at {text[pos:]!r}")


def _parse_value(text: str) -> float:
    special = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}
    return special[text] if text in special else float(text)


def parse_exposition(text: str) -> dict[str, Family]:
    """Parse the text format strictly: HELP and TYPE first, once; samples grouped by family."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    families: dict[str, Family] = {}
    current: Family | None = None
    seen_samples: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            _, keyword, rest = line.split(" ", 2)
            name, _, doc = rest.partition(" ")
            assert _NAME.fullmatch(name), line
            family = families.setdefault(name, Family(name))
            if current is not family:
                assert not family.samples, f"{name}: HELP/TYPE after its samples"
                current = family
            if keyword == "HELP":
                assert family.help is None, f"{name}: two HELP lines"
                family.help = _unescape(doc, {"\\": "\\", "n": "\n"})
            else:
                assert doc in _TYPES, line
                assert family.type == "untyped", f"{name}: two TYPE lines"
                family.type = doc
            continue
        if not line or line.startswith("#"):
            continue
        match = _NAME.match(line)
        assert match, line
        name, pos = match.group(), match.end()
        labels: dict[str, str] = {}
        if line[pos] == "{":
            labels, pos = _parse_labels(line, pos + 1)
        assert line[pos] == " ", line
        value_text, *timestamp = line[pos + 1 :].split(" ")
        assert len(timestamp) <= 1, line
        assert current is not None and current.name == name, f"sample outside its family: {line}"
        key = (name, tuple(sorted(labels.items())))
        assert key not in seen_samples, f"duplicate sample: {line}"
        seen_samples.add(key)
        current.samples.append((labels, _parse_value(value_text)))
    return families


def test_the_parser_unescapes_labels_and_rejects_junk() -> None:
    text = (
        "# HELP m A \\\\ help\\nline.\n# TYPE m gauge\n"
        'm{a="x\\"y",b="back\\\\slash\\nnl"} 1.5\nm 2\n'
    )
    family = parse_exposition(text)["m"]
    assert family.help == "A \\ help\nline."
    assert family.samples == [({"a": 'x"y', "b": "back\\slash\nnl"}, 1.5), ({}, 2.0)]
    for bad in ("m 1", "# TYPE m gauge\nm{a=1} 1\n", "# TYPE m gauge\nm 1\nm 2\n"):
        with pytest.raises((AssertionError, ValueError)):
            parse_exposition(bad)


# -- render -----------------------------------------------------------------------------------


SLOTS = [
    slot_view(0, 101, requests=10, busy=3, threads=4),
    slot_view(1, 102, requests=5, busy=0, threads=4, generation=2),
    slot_view(2, 103, requests=7, busy=4, threads=4, state=WorkerState.DRAINING),
    slot_view(3, 0, state=WorkerState.BOOTING, threads=0, generation=2),  # claimed, not forked yet
]


def test_render_families_types_and_values() -> None:
    restarts = collections.Counter({Cause.CRASH: 2, Cause.TIMEOUT: 1})
    text = render(SLOTS, restarts, 3, {101: 1000, 103: 3000}, retired_requests=100)
    families = parse_exposition(text)
    types = {name: family.type for name, family in families.items()}
    assert types == {
        "prefork_workers": "gauge",
        "prefork_workers_target": "gauge",
        "prefork_threads_busy": "gauge",
        "prefork_threads_idle": "gauge",
        "prefork_requests_total": "counter",
        "prefork_worker_restarts_total": "counter",
        "prefork_worker_threads_busy": "gauge",
        "prefork_worker_threads": "gauge",
        "prefork_worker_requests_total": "counter",
        "prefork_worker_resident_memory_bytes": "gauge",
    }
    assert all(family.help for family in families.values())
    assert families["prefork_workers"].by("state") == {
        "booting": 1,
        "ready": 2,
        "recycle": 0,
        "draining": 1,
    }
    assert families["prefork_workers_target"].value() == 3
    assert families["prefork_threads_busy"].value() == 7
    assert families["prefork_threads_idle"].value() == 5
    assert families["prefork_requests_total"].value() == 100 + 22
    assert families["prefork_worker_restarts_total"].by("cause") == {"crash": 2, "timeout": 1}
    busy = families["prefork_worker_threads_busy"]
    assert busy.value(pid="101", index="0", generation="1") == 3
    assert busy.value(pid="102", index="1", generation="2") == 0
    assert len(busy.samples) == 3  # no series for the slot without a process yet
    assert families["prefork_worker_requests_total"].by("pid") == {"101": 10, "102": 5, "103": 7}
    assert families["prefork_worker_threads"].by("pid") == {"101": 4, "102": 4, "103": 4}
    memory = families["prefork_worker_resident_memory_bytes"]
    assert memory.by("pid") == {"101": 1000, "103": 3000}  # only what could be read
    assert memory.value(pid="103", index="2", generation="1") == 3000


def test_render_with_no_workers() -> None:
    families = parse_exposition(render([], {}, 0, {}))
    assert families["prefork_workers"].by("state") == dict.fromkeys(
        ["booting", "ready", "recycle", "draining"], 0
    )
    assert families["prefork_requests_total"].value() == 0
    assert families["prefork_worker_restarts_total"].samples == []
    assert families["prefork_worker_threads_busy"].samples == []


def test_render_escapes_label_values() -> None:
    weird = 'a "quoted"\\back\nline'
    text = render(SLOTS[:1], {weird: 4, "plain": 1}, 1, {})
    assert "\nline" not in text.replace("\\n", "")  # no raw newline inside a sample
    restarts = parse_exposition(text)["prefork_worker_restarts_total"]
    assert restarts.by("cause") == {weird: 4, "plain": 1}


def test_escape_label_value() -> None:
    assert metrics.escape_label_value('x\\y"z\nw') == 'x\\\\y\\"z\\nw'
    assert metrics.escape_label_value(12) == "12"


class FakeMaster:
    """What master_renderer reads of a Master: a scoreboard, restart counts, a target."""

    def __init__(self, scoreboard: Scoreboard) -> None:
        self.scoreboard = scoreboard
        self.restarts: collections.Counter[Cause] = collections.Counter({Cause.RELOAD: 2})
        self.target = 2
        self.retired_requests = 40


def test_master_renderer_reads_the_scoreboard_and_every_cause() -> None:
    board = Scoreboard(4)
    try:
        board.claim(2, os.getpid(), 1)  # this process stands in for a worker
        worker = board.slot(2)
        worker.set_threads(8)
        worker.set_state(WorkerState.READY)
        worker.heartbeat(busy=5, requests=11, oldest_request_start=time.monotonic())
        families = parse_exposition(metrics.master_renderer(FakeMaster(board))())
    finally:
        board.close()
    assert families["prefork_worker_restarts_total"].by("cause") == {
        cause.value: (2 if cause is Cause.RELOAD else 0) for cause in Cause
    }
    assert families["prefork_workers_target"].value() == 2
    assert families["prefork_requests_total"].value() == 51
    labels = {"pid": str(os.getpid()), "index": "2", "generation": "1"}
    assert families["prefork_worker_threads_busy"].value(**labels) == 5
    assert families["prefork_threads_idle"].value() == 3
    rss = families["prefork_worker_resident_memory_bytes"].value(**labels)
    assert rss == pytest.approx(psutil.Process().memory_info().rss, rel=0.5)


def test_worker_rss_skips_what_is_gone() -> None:
    found = metrics.worker_rss([os.getpid(), 0, 2**22 + 1])
    assert list(found) == [os.getpid()]
    assert found[os.getpid()] > 0


# -- addresses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "family", "bind"),
    [
        ("127.0.0.1:9100", socket.AF_INET, ("127.0.0.1", 9100)),
        (":9100", socket.AF_INET, ("0.0.0.0", 9100)),
        ("[::1]:0", socket.AF_INET6, ("::1", 0)),
        ("unix:/run/prefork/metrics.sock", socket.AF_UNIX, "/run/prefork/metrics.sock"),
        (("127.0.0.1", 0), socket.AF_INET, ("127.0.0.1", 0)),
    ],
)
def test_parse_address(address: Any, family: socket.AddressFamily, bind: Any) -> None:
    assert metrics.parse_address(address) == (family, bind)


def test_a_relative_unix_path_is_made_absolute() -> None:
    assert metrics.parse_address("unix:run/m.sock") == (
        socket.AF_UNIX,
        os.path.join(os.getcwd(), "run/m.sock"),
    )


@pytest.mark.parametrize(
    "address",
    ["9100", "localhost", "127.0.0.1:http", "127.0.0.1:70000", "::1:80", "[::1]", "unix:"],
)
def test_parse_address_errors_are_config_errors(address: str) -> None:
    with pytest.raises(ConfigError) as caught:
        metrics.parse_address(address)
    assert "\n" not in str(caught.value)
    assert "metrics address" in str(caught.value)


# -- the endpoint -----------------------------------------------------------------------------


class Loop:
    """A tiny single-threaded selector loop, in a thread, driving one endpoint (a master's job)."""

    def __init__(self, endpoint: MetricsEndpoint) -> None:
        self.endpoint = endpoint
        self.selector = selectors.DefaultSelector()
        self._stop_read, self._stop_write = socket.socketpair()
        self.selector.register(self._stop_read, selectors.EVENT_READ, "stop")
        endpoint.register(self.selector)
        self.thread = threading.Thread(target=self._run, name="metrics-loop")
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            while True:
                timeout = 1.0
                deadline = self.endpoint.next_deadline()
                if deadline is not None:
                    timeout = min(timeout, max(0.0, deadline - time.monotonic()))
                for key, events in self.selector.select(timeout):
                    if key.data == "stop":
                        return
                    assert key.data is self.endpoint
                    self.endpoint.handle(key, events)
                self.endpoint.expire(time.monotonic())
        except BaseException as exc:
            self.error = exc
            raise

    def stop(self) -> None:
        self._stop_write.send(b"x")
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "the loop did not stop"
        self.endpoint.close()
        self.selector.close()
        self._stop_read.close()
        self._stop_write.close()
        assert self.error is None, self.error


@contextlib.contextmanager
def serving(
    render_text: Callable[[], str] = lambda: "up 1\n", address: Any = "127.0.0.1:0", **kwargs: Any
) -> Iterator[MetricsEndpoint]:
    endpoint = MetricsEndpoint(address, render_text, **kwargs)
    loop = Loop(endpoint)
    loop.thread.start()
    try:
        yield endpoint
    finally:
        loop.stop()


def get(
    endpoint: MetricsEndpoint,
    path: str = "/metrics",
    method: str = "GET",
    body: bytes | None = None,
) -> tuple[http.client.HTTPResponse, bytes]:
    host, port = endpoint.address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def raw_exchange(endpoint: MetricsEndpoint, data: bytes) -> bytes:
    with socket.create_connection(endpoint.address[:2], timeout=TIMEOUT) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_get_metrics() -> None:
    text = render(SLOTS, {"crash": 1}, 3, {})
    with serving(lambda: text) as endpoint:
        response, body = get(endpoint)
        assert response.status == 200
        assert response.getheader("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
        assert response.getheader("Content-Length") == str(len(body))
        assert response.getheader("Connection") == "close"
        assert body.decode() == text
        response, body = get(endpoint, "/metrics?name[]=prefork_workers")
        assert (response.status, body.decode()) == (200, text)


def test_render_is_called_per_scrape() -> None:
    calls = []

    def counting() -> str:
        calls.append(1)
        return f"scrapes {len(calls)}\n"

    with serving(counting) as endpoint:
        assert [get(endpoint)[1] for _ in range(3)] == [
            b"scrapes 1\n",
            b"scrapes 2\n",
            b"scrapes 3\n",
        ]


def test_head_other_paths_and_methods() -> None:
    with serving() as endpoint:
        response, body = get(endpoint, method="HEAD")
        assert (response.status, body) == (200, b"")
        assert response.getheader("Content-Length") == "5"
        response, body = get(endpoint, "/")
        assert response.status == 404
        response, body = get(endpoint, "/metrics/extra")
        assert response.status == 404
        # A request body the endpoint never reads must not turn into a reset
        # that destroys the answer before the client reads it.
        response, body = get(endpoint, method="POST", body=b"x" * 100_000)
        assert response.status == 405
        assert response.getheader("Allow") == "GET, HEAD"
        response, _ = get(endpoint, method="DELETE")
        assert response.status == 405


def test_malformed_and_oversized_requests() -> None:
    with serving() as endpoint:
        assert raw_exchange(endpoint, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        assert raw_exchange(endpoint, b"GET /metrics\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        huge = b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"a" * 20_000
        assert raw_exchange(endpoint, huge).startswith(b"HTTP/1.1 431 ")
        # Bare LF line ends are tolerated.
        reply = raw_exchange(endpoint, b"GET /metrics HTTP/1.0\n\n")
        assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
        assert reply.endswith(b"\r\n\r\nup 1\n")


def test_render_failure_is_a_500_and_the_endpoint_goes_on() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return "ok 1\n"

    with serving(flaky) as endpoint:
        response, _ = get(endpoint)
        assert response.status == 500
        response, body = get(endpoint)
        assert (response.status, body) == (200, b"ok 1\n")


def test_a_large_body_is_written_in_pieces() -> None:
    text = "".join(f'big{{n="{n}"}} {n}\n' for n in range(200_000))  # a few MB
    with serving(lambda: text) as endpoint:
        response, body = get(endpoint)
        assert response.status == 200
        assert len(body) == len(text.encode())
        assert body == text.encode()


def test_a_silent_client_is_dropped_while_others_are_served() -> None:
    with serving() as endpoint, socket.create_connection(endpoint.address[:2], TIMEOUT) as slow:
        started = time.monotonic()
        slow.sendall(b"GET /metr")  # and nothing more
        for _ in range(3):
            response, body = get(endpoint)
            assert (response.status, body) == (200, b"up 1\n")
        assert slow.recv(1024) == b""  # closed by the endpoint, unanswered
        elapsed = time.monotonic() - started
        assert metrics.CONNECTION_TIMEOUT - 0.1 <= elapsed < metrics.CONNECTION_TIMEOUT + 5
        wait_for(lambda: endpoint.open_connections == 0, message="no connection left")


def test_clients_beyond_the_limit_wait_in_the_backlog() -> None:
    with serving(timeout=0.5, max_connections=2) as endpoint:
        silent = [socket.create_connection(endpoint.address[:2], TIMEOUT) for _ in range(2)]
        try:
            wait_for(lambda: endpoint.open_connections == 2, message="two silent clients")
            response, body = get(endpoint)  # served once a silent client expires
            assert (response.status, body) == (200, b"up 1\n")
        finally:
            for sock in silent:
                sock.close()


def test_expire_and_next_deadline_without_a_thread() -> None:
    endpoint = MetricsEndpoint("127.0.0.1:0", lambda: "")
    selector = selectors.DefaultSelector()
    try:
        endpoint.register(selector)
        assert endpoint.next_deadline() is None
        assert endpoint.expire(time.monotonic() + 100) == 0
        with socket.create_connection(endpoint.address[:2], TIMEOUT) as client:
            before = time.monotonic()
            while endpoint.open_connections == 0:
                for key, events in selector.select(TIMEOUT):
                    endpoint.handle(key, events)
            deadline = endpoint.next_deadline()
            assert deadline is not None
            assert before + 2.0 <= deadline <= time.monotonic() + 2.0
            assert endpoint.expire(deadline - 0.5) == 0
            assert endpoint.expire(deadline) == 1
            assert endpoint.open_connections == 0
            assert endpoint.next_deadline() is None
            client.settimeout(TIMEOUT)
            assert client.recv(16) == b""
    finally:
        endpoint.close()
        endpoint.close()  # idempotent
        selector.close()


def test_many_scrapes_leak_no_descriptors() -> None:
    proc = psutil.Process()
    with serving() as endpoint:
        get(endpoint)
        wait_for(lambda: endpoint.open_connections == 0, message="the first connection closed")
        before = proc.num_fds()
        for _ in range(300):
            response, _ = get(endpoint)
            assert response.status == 200
        wait_for(lambda: endpoint.open_connections == 0, message="every connection closed")
        assert proc.num_fds() == before


def test_unix_socket_endpoint_and_stale_socket_file() -> None:
    class UnixHTTPConnection(http.client.HTTPConnection):
        def __init__(self, path: str) -> None:
            super().__init__("localhost", timeout=TIMEOUT)
            self.path = path

        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(TIMEOUT)
            self.sock.connect(self.path)

    with short_tmpdir() as directory:
        path = os.path.join(directory, "metrics.sock")
        with socket.socket(socket.AF_UNIX) as leftover:
            leftover.bind(path)  # a crashed master's socket file: nobody listens
        with serving(address=f"unix:{path}") as endpoint:
            assert endpoint.address == path
            conn = UnixHTTPConnection(path)
            try:
                conn.request("GET", "/metrics")
                response = conn.getresponse()
                assert (response.status, response.read()) == (200, b"up 1\n")
            finally:
                conn.close()
            with pytest.raises(ConfigError, match="cannot bind metrics endpoint"):
                MetricsEndpoint(f"unix:{path}", str)  # a live endpoint is not replaced
        assert not os.path.exists(path)  # removed on close


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback")
def test_ipv6_endpoint() -> None:
    with serving(address="[::1]:0") as endpoint:
        assert endpoint.address[0] == "::1"
        response, body = get(endpoint)
        assert (response.status, body) == (200, b"up 1\n")


def test_an_address_in_use_is_a_config_error() -> None:
    with serving() as endpoint:
        host, port = endpoint.address[:2]
        with pytest.raises(ConfigError) as caught:
            MetricsEndpoint(f"{host}:{port}", str)
        assert "cannot bind metrics endpoint" in str(caught.value)
        assert "\n" not in str(caught.value)


def test_reuse_port_lets_a_second_endpoint_bind_the_same_address() -> None:
    with serving(reuse_port=True) as old:
        host, port = old.address[:2]
        with serving(address=f"{host}:{port}", reuse_port=True) as new:
            assert new.address[:2] == (host, port)
            response, body = get(new)  # whichever of the two answers
            assert (response.status, body) == (200, b"up 1\n")


def test_close_in_child_keeps_what_the_parent_owns() -> None:
    with short_tmpdir() as directory:
        path = os.path.join(directory, "m.sock")
        endpoint = MetricsEndpoint(f"unix:{path}", str)
        selector = selectors.DefaultSelector()
        try:
            endpoint.register(selector)
            endpoint.close_in_child()
            assert endpoint.fileno() == -1
            assert os.path.exists(path)  # the parent's socket file stays
            assert len(selector.get_map()) == 1  # the shared selector is not touched
            endpoint.close()  # nothing left to do
        finally:
            selector.close()
