"""The benchmark cases: which server, started how, loaded how, compared with what.

Every HTTP server answers ``GET /`` with the same 14-byte body (:mod:`bench.apps`; nginx
with ``return 200``), with access logs off.  Groups:

* ``http``: HTTP/1.1 keep-alive, 50 connections;
* ``close``: one connection per request (``Connection: close``), 50 concurrent;
* ``tcp`` / ``udp``: 64-byte echo round trips, 16 persistent connections / sockets;
* ``scale``: prefork and gunicorn gthread at 10, 50, 200 and 1000 keep-alive connections;
* ``grid``: prefork at several workers x threads.

A case's ``baseline`` is the case its throughput ratio is taken against, run for run.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from bench.apps import BODY


@dataclass(frozen=True)
class Env:
    """What a command line is built from."""

    port: int
    tmp: Path
    python: str = sys.executable


@dataclass(frozen=True)
class Case:
    name: str
    group: str
    label: str
    load: str
    """``http``, ``http-close``, ``tcp`` or ``udp`` (see :mod:`bench.loadgen`)."""
    argv: Callable[[Env], list[str]]
    port_pattern: str | None = None
    """Regex on the server's log giving the port it bound, when started on port 0;
    ``None``: the harness picks a free port and passes it."""
    connections: int = 50
    baseline: str | None = None
    workers: int = 0
    """Worker processes (children of a master) to wait for; 0: a single process serves."""
    needs: tuple[str, ...] = ()
    """``module:NAME`` or ``exe:NAME`` that must be installed, else the case is skipped."""
    setup: Callable[[Env], None] | None = None
    params: dict[str, Any] = field(default_factory=dict)


PREFORK_PORT = r"listening on (?:tcp|udp)://127\.0\.0\.1:(\d+)"
STDLIB_PORT = r"listening on 127\.0\.0\.1:(\d+)"
GUNICORN_PORT = r"Listening at: http://127\.0\.0\.1:(\d+)"
WAITRESS_PORT = r"Serving on http://127\.0\.0\.1:(\d+)"

WSGI_APP = "bench.apps:app"
HELLO = "bench.apps:HelloHandler"


def _prefork(*args: str) -> Callable[[Env], list[str]]:
    return lambda env: [env.python, "-m", "prefork", *args]


def _stdlib(kind: str) -> Callable[[Env], list[str]]:
    return lambda env: [env.python, "-m", "bench.servers", kind, "--port", str(env.port)]


@cache
def _gunicorn_extra() -> tuple[str, ...]:
    """``--no-control-socket`` where gunicorn has one (it would write under ``~``)."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "gunicorn", "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return ("--no-control-socket",) if "--no-control-socket" in out else ()


def _gunicorn(worker: str, workers: int, threads: int = 1) -> Callable[[Env], list[str]]:
    def argv(env: Env) -> list[str]:
        cmd = [env.python, "-m", "gunicorn", "-w", str(workers), "-k", worker]
        if worker == "gthread":
            cmd += ["--threads", str(threads)]
        return [*cmd, *_gunicorn_extra(), "-b", f"127.0.0.1:{env.port}", WSGI_APP]

    return argv


def uwsgi_path() -> str | None:
    """The ``uwsgi`` program of the ``pyuwsgi`` wheel, next to this Python first."""
    beside = Path(sys.executable).parent / "uwsgi"
    return str(beside) if beside.exists() else shutil.which("uwsgi")


def _uwsgi(env: Env) -> list[str]:
    return [
        uwsgi_path() or "uwsgi",
        "--http11-socket",
        f"127.0.0.1:{env.port}",
        "--master",
        "--processes",
        "2",
        "--threads",
        "4",
        "--die-on-term",
        "--disable-logging",
        "--need-app",
        "--module",
        WSGI_APP,
    ]


def _granian(env: Env) -> list[str]:
    return [
        env.python,
        "-m",
        "granian",
        "--interface",
        "wsgi",
        "--host",
        "127.0.0.1",
        "--port",
        str(env.port),
        "--workers",
        "2",
        "--no-ws",
        WSGI_APP,
    ]


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 2;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type "text/plain; charset=utf-8";
            return 200 "{body}";
        }}
    }}
}}
"""


def _nginx_setup(env: Env) -> None:
    body = BODY.decode().replace("\n", "\\n")
    (env.tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=env.tmp, port=env.port, body=body))


def _nginx(env: Env) -> list[str]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return [nginx, "-p", str(env.tmp), "-e", str(env.tmp / "nginx-error.log"), "-c",
            str(env.tmp / "nginx.conf")]  # fmt: skip


def _cases() -> list[Case]:
    cases = [
        # -- HTTP keep-alive, 50 connections ---------------------------------------------
        Case("nginx", "http", "nginx `return 200` (the machine's ceiling)", "http", _nginx,
             workers=2, needs=("exe:nginx",), setup=_nginx_setup,
             baseline="stdlib-threading-http"),
        Case("stdlib-threading-http", "http", "stdlib ThreadingHTTPServer, hello handler",
             "http", _stdlib("stdlib-threading-http"), STDLIB_PORT),
        Case("prefork-http", "http", "prefork -w 2 (4 threads), same hello handler", "http",
             _prefork("-w", "2", "-b", "127.0.0.1:0", HELLO), PREFORK_PORT, workers=2,
             baseline="stdlib-threading-http", params={"workers": 2, "threads": 4}),
        Case("prefork-wsgi", "http", "prefork --wsgi -w 2 (4 threads), hello WSGI app",
             "http", _prefork("--wsgi", "-w", "2", "-b", "127.0.0.1:0", WSGI_APP),
             PREFORK_PORT, workers=2, baseline="stdlib-threading-http"),
        Case("gunicorn-sync", "http", "gunicorn sync -w 2, hello WSGI app", "http",
             _gunicorn("sync", 2), GUNICORN_PORT, workers=2, needs=("module:gunicorn",),
             baseline="stdlib-threading-http"),
        Case("gunicorn-gthread-2x4", "http", "gunicorn gthread -w 2 --threads 4", "http",
             _gunicorn("gthread", 2, 4), GUNICORN_PORT, workers=2,
             needs=("module:gunicorn",), baseline="stdlib-threading-http"),
        Case("gunicorn-gthread-2x50", "http", "gunicorn gthread -w 2 --threads 50", "http",
             _gunicorn("gthread", 2, 50), GUNICORN_PORT, workers=2,
             needs=("module:gunicorn",), baseline="stdlib-threading-http"),
        Case("waitress", "http", "waitress (1 process, 4 threads), hello WSGI app", "http",
             lambda env: [env.python, "-m", "waitress", "--listen=127.0.0.1:0", WSGI_APP],
             WAITRESS_PORT, needs=("module:waitress",), baseline="stdlib-threading-http"),
        Case("uwsgi", "http", "uWSGI (pyuwsgi) --http11-socket, 2 processes x 4 threads",
             "http", _uwsgi, workers=2, needs=("module:pyuwsgi", "exe:uwsgi"),
             baseline="stdlib-threading-http"),
        Case("granian", "http", "granian --interface wsgi --workers 2", "http", _granian,
             workers=2, needs=("module:granian",), baseline="stdlib-threading-http"),
        # uWSGI's threads each hold one keep-alive connection until it closes: at 50 it
        # serves 8 and leaves the rest waiting. At 8 both serve every connection.
        Case("uwsgi-c8", "wsgi-peers", "uWSGI 2x4, 8 connections (one per thread)", "http",
             _uwsgi, connections=8, workers=2, needs=("module:pyuwsgi", "exe:uwsgi")),
        Case("prefork-wsgi-c8", "wsgi-peers", "prefork --wsgi 2x4, 8 connections", "http",
             _prefork("--wsgi", "-w", "2", "-b", "127.0.0.1:0", WSGI_APP), PREFORK_PORT,
             connections=8, workers=2, baseline="uwsgi-c8"),
        Case("uwsgi-c1000", "wsgi-peers", "uWSGI 2x4, 1000 connections", "http", _uwsgi,
             connections=1000, workers=2, needs=("module:pyuwsgi", "exe:uwsgi")),
        Case("prefork-wsgi-c1000", "wsgi-peers", "prefork --wsgi 2x4, 1000 connections",
             "http", _prefork("--wsgi", "-w", "2", "-b", "127.0.0.1:0", WSGI_APP),
             PREFORK_PORT, connections=1000, workers=2, baseline="uwsgi-c1000"),
        # -- HTTP, one connection per request ----------------------------------------------
        Case("stdlib-threading-http-close", "close", "stdlib ThreadingHTTPServer",
             "http-close", _stdlib("stdlib-threading-http"), STDLIB_PORT),
        Case("prefork-http-close", "close", "prefork -w 2 (4 threads), hello handler",
             "http-close", _prefork("-w", "2", "-b", "127.0.0.1:0", HELLO), PREFORK_PORT,
             workers=2, baseline="stdlib-threading-http-close"),
        Case("stdlib-forking-http-close", "close",
             "stdlib ForkingMixIn + HTTPServer (fork per connection)", "http-close",
             _stdlib("stdlib-forking-http"), STDLIB_PORT,
             baseline="stdlib-threading-http-close"),
        Case("prefork-forking-http-close", "close",
             "prefork.ForkingMixIn + HTTPServer (fork per connection)", "http-close",
             _stdlib("prefork-forking-http"), STDLIB_PORT,
             baseline="stdlib-forking-http-close"),
        # -- echo ----------------------------------------------------------------------------
        Case("stdlib-threading-tcp", "tcp", "stdlib ThreadingTCPServer echo", "tcp",
             _stdlib("stdlib-threading-tcp"), STDLIB_PORT, connections=16),
        Case("stdlib-forking-tcp", "tcp", "stdlib ForkingTCPServer echo", "tcp",
             _stdlib("stdlib-forking-tcp"), STDLIB_PORT, connections=16,
             baseline="stdlib-threading-tcp"),
        Case("prefork-tcp", "tcp", "prefork -w 2 --threads 8 echo", "tcp",
             _prefork("-w", "2", "--threads", "8", "-b", "127.0.0.1:0",
                      "bench.apps:EchoHandler"),
             PREFORK_PORT, connections=16, workers=2, baseline="stdlib-threading-tcp"),
        Case("stdlib-threading-udp", "udp", "stdlib ThreadingUDPServer echo", "udp",
             _stdlib("stdlib-threading-udp"), STDLIB_PORT, connections=16),
        Case("prefork-udp", "udp", "prefork -w 2 (4 threads) UDP echo", "udp",
             _prefork("-w", "2", "-b", "udp://127.0.0.1:0", "bench.apps:UDPEchoHandler"),
             PREFORK_PORT, connections=16, workers=2, baseline="stdlib-threading-udp"),
    ]  # fmt: skip
    for conns in (10, 50, 200, 1000):
        cases.append(
            Case(f"scale-gthread-c{conns}", "scale", f"gunicorn gthread 2x4, {conns} conns",
                 "http", _gunicorn("gthread", 2, 4), GUNICORN_PORT, connections=conns,
                 workers=2, needs=("module:gunicorn",),
                 params={"server": "gunicorn gthread 2x4", "connections": conns})
        )  # fmt: skip
        cases.append(
            Case(f"scale-prefork-c{conns}", "scale", f"prefork 2x4, {conns} conns", "http",
                 _prefork("-w", "2", "-b", "127.0.0.1:0", HELLO), PREFORK_PORT,
                 connections=conns, workers=2, baseline=f"scale-gthread-c{conns}",
                 params={"server": "prefork 2x4", "connections": conns})
        )  # fmt: skip
    for workers, threads in ((1, 1), (1, 4), (2, 4), (2, 16), (4, 4)):
        cases.append(
            Case(f"grid-prefork-{workers}x{threads}", "grid",
                 f"prefork -w {workers} --threads {threads}", "http",
                 _prefork("-w", str(workers), "--threads", str(threads), "-b", "127.0.0.1:0",
                          HELLO),
                 PREFORK_PORT, workers=workers,
                 baseline=None if (workers, threads) == (1, 1) else "grid-prefork-1x1",
                 params={"workers": workers, "threads": threads})
        )  # fmt: skip
    return cases


CASES: list[Case] = _cases()
BY_NAME: dict[str, Case] = {case.name: case for case in CASES}

GROUPS: dict[str, str] = {
    "http": "HTTP/1.1 keep-alive, hello, 50 connections",
    "close": "HTTP, one connection per request, 50 concurrent",
    "tcp": "TCP echo, 64-byte round trips, 16 persistent connections",
    "udp": "UDP echo, 64-byte datagrams, 16 sockets with one datagram in flight each",
    "wsgi-peers": "WSGI hello: prefork --wsgi 2x4 vs uWSGI 2x4, 8 and 1000 connections",
    "scale": "Keep-alive connections: prefork 2x4 vs gunicorn gthread 2x4",
    "grid": "prefork workers x threads (hello handler, 50 keep-alive connections)",
}


def missing(case: Case) -> list[str]:
    """What ``case`` needs that is not installed."""
    absent = []
    for need in case.needs:
        kind, _, name = need.partition(":")
        if kind == "module":
            found = importlib.util.find_spec(name) is not None
        elif name == "uwsgi":
            found = uwsgi_path() is not None
        else:
            found = shutil.which(name) is not None or Path(f"/usr/sbin/{name}").exists()
        if not found:
            absent.append(name)
    return absent


def select(patterns: str | None) -> list[Case]:
    """The cases whose name or group matches one of the comma-separated ``patterns``.

    A pattern is a group name, an exact case name, or a shell-style glob (``prefork-*``).
    """
    if not patterns:
        return list(CASES)
    import fnmatch

    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    chosen = [
        case
        for case in CASES
        if any(p in (case.name, case.group) or fnmatch.fnmatchcase(case.name, p) for p in wanted)
    ]
    unknown = [
        p
        for p in wanted
        if not any(p in (c.name, c.group) or fnmatch.fnmatchcase(c.name, p) for c in CASES)
    ]
    if unknown:
        raise ValueError(f"no case matches {', '.join(unknown)} (see --list)")
    return chosen
