"""WSGI applications for tests/test_wsgi.py.

Plain WSGI callables (most of them meant to run under ``wsgiref.validate``),
and a Flask application built by :func:`make_flask_app`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], None]]
App = Callable[[Environ, StartResponse], Iterable[bytes]]

TEXT = [("Content-Type", "text/plain")]


def _length(body: bytes) -> list[tuple[str, str]]:
    return [*TEXT, ("Content-Length", str(len(body)))]


def hello(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """The benchmark's app: a short text body with its length."""
    body = b"Hello, World!"
    start_response("200 OK", _length(body))
    return [body]


def read_all(stream: Any) -> bytes:
    """Read a ``wsgi.input`` to its end with ``read(n)`` (as the validator wants)."""
    parts = []
    while chunk := stream.read(8192):
        parts.append(chunk)
    return b"".join(parts)


def echo(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Answer the request body, read in blocks (with ``?all``, by one ``read()``)."""
    stream = environ["wsgi.input"]
    body = stream.read() if environ["QUERY_STRING"] == "all" else read_all(stream)
    start_response("200 OK", _length(body))
    return [body]


def echo_lines(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Read the body with ``readline()``, ``readlines()`` or iteration (``?how=``)."""
    stream = environ["wsgi.input"]
    how = environ["QUERY_STRING"]
    if how == "readline":
        lines = []
        while line := stream.readline():
            lines.append(line)
    elif how == "readline-sized":
        lines = []
        while line := stream.readline(4):
            lines.append(line)
    elif how == "readlines":
        lines = stream.readlines()
    else:
        lines = list(stream)
    body = json.dumps([line.decode("latin-1") for line in lines]).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def stream(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """A generator body without a Content-Length: ``?n`` lines."""
    count = int(environ["QUERY_STRING"] or 3)
    start_response("200 OK", TEXT)
    for n in range(count):
        yield b"line %d\n" % n


def writer(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """The body through the ``write()`` callable, then an iterable."""
    write = start_response("200 OK", TEXT)
    write(b"written ")
    write(b"twice ")
    return [b"and returned"]


def environ_dump(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """The environ as JSON: str values as they are, others described."""
    read_all(environ["wsgi.input"])
    dump = {
        key: value if isinstance(value, str) else repr(value)
        for key, value in environ.items()
        if key not in ("wsgi.input", "wsgi.errors", "wsgi.file_wrapper")
    }
    dump["wsgi.errors is sys.stderr"] = repr(environ["wsgi.errors"] is __import__("sys").stderr)
    dump["wsgi.file_wrapper"] = environ["wsgi.file_wrapper"].__name__
    body = json.dumps(dump).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def ignore_body(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Answer without reading the request body."""
    body = b"ignored"
    start_response("200 OK", _length(body))
    return [body]


def responder(
    status: str, headers: list[tuple[str, str]], body: Iterable[bytes] | None = None
) -> App:
    """An app answering ``status``, ``headers`` and ``body`` (a fresh iterator each time)."""
    parts = list(body or [])

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response(status, list(headers))
        yield from parts

    return app


def fail_before(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Raise before starting the response."""
    raise RuntimeError("the application failed")


def fail_after(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """Raise in the middle of a streamed body."""
    start_response("200 OK", TEXT)
    yield b"first part\n"
    raise RuntimeError("the application failed mid-body")


def error_page(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Fail after ``start_response``, then replace the response using ``exc_info``."""
    import sys

    start_response("200 OK", TEXT)
    try:
        raise ValueError("oops")
    except ValueError:
        body = b"custom error page"
        start_response("503 Service Unavailable", _length(body), sys.exc_info())
    return [body]


def late_exc_info(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """``start_response`` with ``exc_info`` after the headers were sent: it re-raises."""
    import sys

    start_response("200 OK", TEXT)
    yield b"sent\n"
    try:
        raise ValueError("too late")
    except ValueError:
        start_response("500 Internal Server Error", TEXT, sys.exc_info())
    yield b"never\n"


class Endless:
    """A long streamed body; records that ``close()`` was called."""

    def __init__(self) -> None:
        self.closed = threading.Event()
        self.block = b"x" * 65536

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", TEXT)
        return self._body()

    def _body(self) -> Iterator[bytes]:
        try:
            for _ in range(16384):  # 1 GiB: the client leaves long before
                yield self.block
        finally:
            self.closed.set()


def file_app(path: str, offset: int = 0, binary: bool = True) -> App:
    """Serve the file at ``path`` (from ``offset``) through ``wsgi.file_wrapper``."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        f = open(path, "rb")  # noqa: SIM115 - closed by the server through the wrapper
        f.seek(offset)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](f, 4096)  # type: ignore[no-any-return]

    return app


def bytesio_app(data: bytes) -> App:
    """Serve a BytesIO through ``wsgi.file_wrapper`` (no fd: read block by block)."""
    import io

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](io.BytesIO(data), 1000)  # type: ignore[no-any-return]

    return app


def make_flask_app() -> Any:
    """A Flask app: JSON in and out, a form POST, a streamed response, a redirect, a pid."""
    from flask import Flask, Response, jsonify, redirect, request

    app = Flask("prefork_wsgi_tests")

    @app.get("/json")
    def get_json() -> Any:
        return jsonify(hello="world", numbers=[1, 2, 3], args=request.args.to_dict())

    @app.post("/json")
    def post_json() -> Any:
        return jsonify(received=request.get_json(), length=request.content_length)

    @app.post("/form")
    def form() -> Any:
        return f"name={request.form['name']} tags={','.join(request.form.getlist('tag'))}"

    @app.get("/stream")
    def streamed() -> Any:
        return Response((f"row {n}\n" for n in range(5)), mimetype="text/plain")

    @app.get("/redirect")
    def moved() -> Any:
        return redirect("/json")

    @app.get("/cookie")
    def cookie() -> Any:
        response = jsonify(seen=request.cookies.get("flavour"))
        response.set_cookie("flavour", "oatmeal", httponly=True)
        return response

    @app.get("/pid")
    def pid() -> Any:
        return str(os.getpid())

    return app
