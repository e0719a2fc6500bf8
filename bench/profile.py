"""Where a request's time goes: ``python -m bench.profile handler|syscalls``.

``handler``
    The CPU one request costs in the handler alone, in this process: requests
    pipelined over a socket pair into ``WSGIRequestHandler.handle_one_request``
    (the WSGI hello) and into an unchanged ``http.server`` handler (the
    ``HelloHandler`` of :mod:`bench.apps`), then the functions that take the most
    time of their own per request (cProfile; its overhead inflates the total, not
    the ranking).
``syscalls``
    One prefork worker (``-w 1``) under ``wrk -c50`` on loopback: system calls
    and context switches per request, counted by ``perf stat`` on the worker's
    pid (syscall tracepoints; no slowdown to speak of, unlike strace).  Needs
    ``wrk`` and ``perf`` (Debian's linux-perf).

Both print Markdown, for the analysis block of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.apps import HelloHandler, app

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
#: Requests sent at once: what fits in a socket pair's buffers with their responses.
BATCH = 25
SYSCALLS = ("futex", "epoll_wait", "epoll_ctl", "read", "write", "recvfrom", "sendto", "poll")


class _Server:
    """What a handler reads of its server."""

    server_address = ("127.0.0.1", 8000)
    application = staticmethod(app)
    access_log = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        raise RuntimeError("the handler failed")


def _handler_on_pair(handler_class: type) -> tuple[Any, socket.socket]:
    """A handler set up on one end of a socket pair, its ``handle()`` not run."""
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    handler = handler_class.__new__(handler_class)
    handler.handle = handler.finish = lambda: None
    handler.__init__(ours, ("127.0.0.1", 5555), _Server())
    del handler.handle, handler.finish
    theirs.setblocking(False)
    return handler, theirs


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(1 << 20):
            pass
    except BlockingIOError:
        pass


def _serve_batches(handler: Any, client: socket.socket, batches: int) -> None:
    data = REQUEST * BATCH
    for _ in range(batches):
        client.sendall(data)
        for _ in range(BATCH):
            handler.handle_one_request()
        _drain(client)


def handler_cost(handler_class: type, batches: int, rounds: int = 9) -> float:
    """The median over ``rounds`` of the CPU microseconds per request."""
    handler, client = _handler_on_pair(handler_class)
    per_request = []
    for _ in range(rounds):
        started = time.process_time()
        _serve_batches(handler, client, batches)
        per_request.append((time.process_time() - started) / (batches * BATCH) * 1e6)
    return sorted(per_request)[rounds // 2]


def top_functions(handler_class: type, batches: int, count: int) -> list[tuple[str, float, float]]:
    """(function, calls per request, own microseconds per request), the costliest first."""
    handler, client = _handler_on_pair(handler_class)
    profile = cProfile.Profile()
    profile.runcall(_serve_batches, handler, client, batches)
    requests = batches * BATCH
    rows = []
    for (path, line, name), (_, calls, own, _cumulative, _) in pstats.Stats(profile).stats.items():
        where = f"{Path(path).name}:{line}({name})" if line else name
        rows.append((where, calls / requests, own / requests * 1e6))
    rows.sort(key=lambda row: -row[2])
    return rows[:count]


def report_handlers(batches: int, count: int) -> str:
    from prefork.http.wsgi import WSGIRequestHandler

    lines = []
    for label, handler_class in (
        ("WSGI hello (`prefork.http.wsgi.WSGIRequestHandler`)", WSGIRequestHandler),
        ("http.server hello (`bench.apps.HelloHandler`)", HelloHandler),
    ):
        cost = handler_cost(handler_class, batches)
        lines += [
            f"**{label}**: {cost:.1f} us of CPU per request in `handle_one_request` "
            f"(median of 9 rounds of {batches * BATCH} pipelined requests).",
            "",
            "| function (cProfile) | calls per request | own us per request |",
            "|---|--:|--:|",
        ]
        for where, calls, own in top_functions(handler_class, batches, count):
            lines.append(f"| `{where}` | {calls:.1f} | {own:.2f} |")
        lines.append("")
    return "\n".join(lines)


# -- syscalls of a worker under load ------------------------------------------------------


def _wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)  # polling a log file written by another process
    raise RuntimeError(f"timed out waiting for {what}")


def syscalls_per_request(
    app_args: Sequence[str], threads: int, duration: float
) -> dict[str, float]:
    """Syscalls and context switches per request of one worker serving ``wrk -c50``."""
    if not shutil.which("wrk") or not shutil.which("perf"):
        raise SystemExit("bench.profile syscalls needs wrk and perf")
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with open(log, "wb") as out:
            server = subprocess.Popen(
                [sys.executable, "-m", "prefork", "-w", "1", "--threads", str(threads),
                 "-b", "127.0.0.1:0", *app_args],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            text = _wait_for(lambda: _text_with(log, "ready"), 30, "the worker")
            port = re.search(r"listening on tcp://127\.0\.0\.1:(\d+)", text)
            assert port, text
            url = f"http://127.0.0.1:{port[1]}/"
            (worker,) = [int(p) for p in _children(server.pid)]
            subprocess.run(["wrk", "-t1", "-c10", "-d1", url], check=True, capture_output=True)
            events = ",".join(
                ["context-switches", *(f"syscalls:sys_enter_{name}" for name in SYSCALLS)]
            )
            counts = Path(tmp) / "perf.txt"
            perf = subprocess.Popen(
                ["perf", "stat", "-x,", "-e", events, "-p", str(worker), "-o", str(counts),
                 "--", "sleep", str(duration + 0.3)],
            )  # fmt: skip
            load = subprocess.run(
                ["wrk", "-t2", "-c50", f"-d{duration:g}", url],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            perf.wait(timeout=duration + 30)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        requests = int(re.search(r"(\d+) requests in", load.stdout)[1])  # type: ignore[index]
        result = {"requests": float(requests), "req/s": requests / duration}
        for row in counts.read_text().splitlines():
            fields = row.split(",")
            if len(fields) > 2 and fields[0].strip().isdigit():
                result[fields[2].removeprefix("syscalls:sys_enter_")] = int(fields[0]) / requests
        return result


def _text_with(path: Path, word: str) -> str | None:
    """``path``'s text once it holds ``word``."""
    text = path.read_text()
    return text if word in text else None


def _children(pid: int) -> list[str]:
    with open(f"/proc/{pid}/task/{pid}/children") as file:
        return file.read().split()


def report_syscalls(threads: int, duration: float) -> str:
    lines = [
        f"One worker, `--threads {threads}`, `wrk -t2 -c50 -d{duration:g}`, counted by"
        " `perf stat` on the worker:",
        "",
        "| per request | `--wsgi bench.apps:app` | `bench.apps:HelloHandler` |",
        "|---|--:|--:|",
    ]
    wsgi = syscalls_per_request(["--wsgi", "bench.apps:app"], threads, duration)
    hello = syscalls_per_request(["bench.apps:HelloHandler"], threads, duration)
    for key in ("req/s", "context-switches", *SYSCALLS):
        if key == "req/s":
            lines.append(f"| req/s (under perf) | {wsgi[key]:,.0f} | {hello[key]:,.0f} |")
        elif wsgi.get(key, 0) or hello.get(key, 0):
            lines.append(f"| {key} | {wsgi.get(key, 0):.2f} | {hello.get(key, 0):.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    handler = sub.add_parser("handler", help="handler CPU per request, in this process")
    handler.add_argument("--batches", type=int, default=200, help="batches of 25 requests")
    handler.add_argument("--top", type=int, default=12, help="functions listed")
    syscalls = sub.add_parser("syscalls", help="syscalls per request of a worker under wrk")
    syscalls.add_argument("--threads", type=int, default=4)
    syscalls.add_argument("--duration", type=float, default=3.0)
    options = parser.parse_args(argv)
    if options.what == "handler":
        print(report_handlers(options.batches, options.top))
    else:
        print(report_syscalls(options.threads, options.duration))
    return 0


if __name__ == "__main__":
    sys.exit(main())
