"""How worker processes should share a listening socket: ``python -m bench.listener_sharing``.

Three ways for N forked workers to take connections on one TCP port:

* ``shared``: one socket, bound by the parent and inherited; every worker waits on it in its
  own ``epoll`` (level-triggered) and accepts non-blocking until ``EAGAIN``.  This is what
  prefork's engine does (``prefork/engine/worker.py``: the listener is registered in each worker's
  selector while a thread is idle, and ``accept`` runs on a non-blocking socket).  Every
  waiting worker is woken for each new connection; all but one find nothing;
* ``exclusive``: the same socket, registered with ``EPOLLEXCLUSIVE``, so that the kernel
  wakes one waiting worker (sometimes a few) instead of all of them;
* ``reuseport``: one ``SO_REUSEPORT`` socket per worker on the same port; the kernel spreads
  the connections over the sockets by a hash of the addresses, whether or not the worker
  behind a socket is busy.

The workers are minimal on purpose, so that only the listener differs: one single-threaded
``epoll`` loop each, answering every request with the same 14-byte hello as the benchmark
(:data:`bench.apps.BODY`) after ``--work-us`` microseconds of busy CPU, the per-request cost
of prefork's ``BaseHTTPRequestHandler`` path.  A worker accepts at most ``--accept-batch``
connections per wake-up, as an engine worker accepts at most one per idle thread.  With
``--uneven``, worker 0 also blocks ``--slow-ms`` per request (a slow path, a GC pause, a
noisy neighbour), and a busy worker is not waiting in ``epoll_wait``, as an engine worker
with no idle thread does not listen.

Loads (as ``python -m bench``): ``wrk -t2 -c50`` HTTP/1.1 keep-alive, and the Python
generator with one connection per request (50 concurrent).  Everything is on 127.0.0.1,
bounded in time, and every worker is stopped by pid and reaped.  Results: requests/s, p99,
and how the requests were spread over the workers (the busiest worker's share over the
least busy one's), medians over ``--runs`` interleaved runs; ``--json`` keeps them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import loadgen, wrk
from bench.apps import BODY

MODES = ("shared", "exclusive", "reuseport")
LOADS = ("keepalive", "close")

ROOT = Path(__file__).resolve().parent.parent
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n\r\n%b" % (len(BODY), BODY)
)
CLOSE_RESPONSE = RESPONSE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)


# -- the workers ---------------------------------------------------------------------------


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class MiniWorker:
    """One worker process: an ``epoll`` loop that accepts and answers hello requests."""

    def __init__(
        self, listener: socket.socket, exclusive: bool, work: float, slow: float, batch: int
    ) -> None:
        self.listener = listener
        self.work = work
        self.slow = slow
        self.batch = batch
        self.epoll = select.epoll()
        flags = select.EPOLLIN | (select.EPOLLEXCLUSIVE if exclusive else 0)
        self.epoll.register(listener.fileno(), flags)
        self.conns: dict[int, tuple[socket.socket, bytearray]] = {}
        self.accepted = 0
        self.served = 0
        self.wakeups = 0
        self.empty_accepts = 0
        self.stopping = False

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        listen_fd = self.listener.fileno()
        while not self.stopping:
            try:
                events = self.epoll.poll(0.1)
            except InterruptedError:
                continue
            for fd, _ in events:
                if fd == listen_fd:
                    self.wakeups += 1
                    self._accept()
                else:
                    self._readable(fd)

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def _accept(self) -> None:
        for taken in range(self.batch):
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                if taken == 0:
                    self.empty_accepts += 1  # woken for a connection another worker took
                return
            except OSError:
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.accepted += 1
            self.conns[conn.fileno()] = (conn, bytearray())
            self.epoll.register(conn.fileno(), select.EPOLLIN)

    def _readable(self, fd: int) -> None:
        conn, buf = self.conns[fd]
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(fd)
            return
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            del buf[: end + 4]
            close = b"connection: close" in head
            self._work()
            try:
                conn.sendall(CLOSE_RESPONSE if close else RESPONSE)
            except OSError:
                close = True
            self.served += 1
            if close:
                self._close(fd)
                return

    def _work(self) -> None:
        if self.work:
            _spin(self.work)
        if self.slow:
            time.sleep(self.slow)

    def _close(self, fd: int) -> None:
        conn, _ = self.conns.pop(fd)
        with contextlib.suppress(OSError):
            self.epoll.unregister(fd)
        conn.close()

    def stats(self) -> dict[str, int]:
        return {
            "accepted": self.accepted,
            "served": self.served,
            "wakeups": self.wakeups,
            "empty_accepts": self.empty_accepts,
        }


def _listener(port: int, reuseport: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Pool:
    """The parent's side: bind, fork the workers, stop them by pid, collect their figures."""

    def __init__(self, mode: str, workers: int, args: argparse.Namespace) -> None:
        self.mode = mode
        self.count = workers
        self.args = args
        self.pids: list[int] = []
        self.pipes: list[int] = []
        self.port = 0

    def start(self) -> None:
        reuseport = self.mode == "reuseport"
        first = _listener(0, reuseport)
        self.port = first.getsockname()[1]
        sockets = [first]
        if reuseport:  # one socket per worker; else every worker shares the first one
            sockets += [_listener(self.port, True) for _ in range(self.count - 1)]
        try:
            for index in range(self.count):
                self._fork(index, sockets[index] if reuseport else first, sockets)
        finally:
            for sock in sockets:
                sock.close()  # the parent never accepts

    def _fork(self, index: int, mine: socket.socket, all_sockets: list[socket.socket]) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(read_fd)
                for sock in all_sockets:
                    if sock is not mine:
                        sock.close()
                slow = self.args.slow_ms / 1000 if self.args.uneven and index == 0 else 0.0
                worker = MiniWorker(
                    mine, self.mode == "exclusive", self.args.work_us / 1e6, slow,
                    self.args.accept_batch,
                )  # fmt: skip
                worker.run()
                os.write(write_fd, json.dumps(worker.stats()).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        self.pids.append(pid)
        self.pipes.append(read_fd)

    def stop(self) -> list[dict[str, int]]:
        """``SIGTERM`` every worker (``SIGKILL`` after 5 s), reap them, return their figures."""
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        left = set(self.pids)
        while left:
            for pid in list(left):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    left.discard(pid)
            if left and time.monotonic() > deadline:
                for pid in left:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                for pid in left:
                    os.waitpid(pid, 0)
                left.clear()
            elif left:
                time.sleep(0.02)
        stats = []
        for fd in self.pipes:
            with os.fdopen(fd, "rb") as pipe:
                raw = pipe.read()
            stats.append(json.loads(raw) if raw else {})
        return stats


# -- the loads -----------------------------------------------------------------------------


def _load(kind: str, port: int, duration: float, connections: int) -> dict[str, Any]:
    if kind == "keepalive":
        cmd = wrk.command(f"http://127.0.0.1:{port}/", connections, duration)
        result, _ = wrk.run(cmd, timeout=duration + 30)
        return result
    shares = [connections // 2 + (i < connections % 2) for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen", "http-close", "--port", str(port),
             "--connections", str(n), "--duration", str(duration), "--timeout", "5"],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT,
        )
        for n in shares
    ]  # fmt: skip
    outs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=duration + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        outs.append(json.loads(out))
    merged = loadgen.merge(outs)
    hist = {int(k): v for k, v in merged["hist"].items()}
    return {
        "rps": merged["requests"] / merged["elapsed"] if merged["elapsed"] else 0.0,
        "p99": loadgen.percentile(hist, 0.99),
        "errors": merged["errors"],
    }


def measure(mode: str, workers: int, kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """One run: start the workers, warm up, load, stop; the figures."""
    pool = Pool(mode, workers, args)
    try:
        pool.start()
        _load(kind, pool.port, args.warmup, args.connections)
        result = _load(kind, pool.port, args.duration, args.connections)
    finally:
        stats = pool.stop()
    served = [s.get("served", 0) for s in stats]
    total = sum(served) or 1
    return {
        "rps": result.get("rps", 0.0),
        "p99": result.get("p99"),
        "errors": result.get("errors"),
        "shares": [round(n / total, 3) for n in served],
        "spread": max(served) / max(1, min(served)),
        "slow_share": served[0] / total,
        "empty_accepts": sum(s.get("empty_accepts", 0) for s in stats),
        "wakeups": sum(s.get("wakeups", 0) for s in stats),
        "accepted": sum(s.get("accepted", 0) for s in stats),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.listener_sharing", description=__doc__)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--workers", default="2,4", help="worker counts (comma-separated)")
    parser.add_argument("--loads", default=",".join(LOADS))
    parser.add_argument("--balance", default="even,uneven", help="even, uneven or both")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--work-us", type=float, default=60.0, help="busy CPU per request")
    parser.add_argument("--slow-ms", type=float, default=2.0, help="--uneven: worker 0's delay")
    parser.add_argument("--accept-batch", type=int, default=4)
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    args = parser.parse_args(argv)
    args.uneven = False
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if "keepalive" in args.loads and not shutil.which("wrk"):
        raise SystemExit("wrk is needed for the keep-alive load (apt-get install wrk)")
    configs = [
        (balance, kind, workers, mode)
        for balance in args.balance.split(",")
        for kind in args.loads.split(",")
        for workers in (int(w) for w in args.workers.split(","))
        for mode in args.modes.split(",")
    ]
    runs: dict[tuple[str, str, int, str], list[dict[str, Any]]] = {c: [] for c in configs}
    for run in range(args.runs):
        for config in configs if run % 2 == 0 else configs[::-1]:
            balance, kind, workers, mode = config
            args.uneven = balance == "uneven"
            figures = measure(mode, workers, kind, args)
            runs[config].append(figures)
            print(f"run {run} {balance:6} {kind:9} w={workers} {mode:9} "
                  f"{figures['rps']:9.0f} req/s p99 {(figures['p99'] or 0) * 1e3:7.2f} ms "
                  f"shares {figures['shares']}", file=sys.stderr, flush=True)  # fmt: skip
    print(
        "| balance | load | workers | mode | req/s | p99 ms | spread | worker 0 share "
        "| empty wake-ups per 1k conns |"
    )
    print("|---|---|--:|---|--:|--:|--:|--:|--:|")
    for config, figures in runs.items():
        balance, kind, workers, mode = config

        def med(key: str, figures: list[dict[str, Any]] = figures) -> float:
            return statistics.median((f[key] or 0.0) for f in figures)

        accepted = med("accepted") or 1
        print(f"| {balance} | {kind} | {workers} | {mode} | {med('rps'):,.0f} "
              f"| {med('p99') * 1e3:.2f} | {med('spread'):.2f} | {med('slow_share'):.2f} "
              f"| {1000 * med('empty_accepts') / accepted:.0f} |")  # fmt: skip
    if args.json:
        rows = [
            {"balance": c[0], "load": c[1], "workers": c[2], "mode": c[3], "runs": f}
            for c, f in runs.items()
        ]
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
