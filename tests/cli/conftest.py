"""Fixtures for the command tests: an application directory and started commands."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import CommandProcess

APP = """
import http.server
import os
import threading

import prefork

VERSION = "v1"


class Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        if self.path == "/hang":
            threading.Event().wait()
        worker = self.server._prefork_worker.process
        if self.path == "/pid":
            body = f"{os.getpid()} {worker.generation}\\n".encode()
        else:
            body = f"{VERSION} {os.getpid()} {worker.generation}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Echo(prefork.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(b"%d %s" % (os.getpid(), line))


class DatagramEcho(prefork.DatagramRequestHandler):
    def handle(self):
        self.wfile.write(b"%d %s" % (os.getpid(), self.rfile.read()))


def wsgi_app(environ, start_response):
    body = f"wsgi {os.getpid()} {environ['PATH_INFO']}\\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


NOT_AN_APP = 42
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A directory with ``myapp.py`` (handlers and a WSGI app), the command's cwd."""
    (tmp_path / "myapp.py").write_text(textwrap.dedent(APP))
    return tmp_path


@pytest.fixture
def start_command(app_dir: Path) -> Iterator[Callable[..., CommandProcess]]:
    """``start_command(*args, binds=1, env=None)``; every command is killed and reaped after."""
    started: list[CommandProcess] = []

    def start(*args: Any, binds: int = 1, env: dict[str, str] | None = None) -> CommandProcess:
        command = CommandProcess(*args, cwd=app_dir, env=env)
        started.append(command)
        return command.start(binds=binds)

    yield start
    for command in reversed(started):
        command.close()
