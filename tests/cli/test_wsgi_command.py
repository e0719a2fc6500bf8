"""``prefork --wsgi``: a real Flask application answers as it does under its own test client."""

from __future__ import annotations

import http.client
import json
import textwrap
import urllib.parse
from pathlib import Path

import pytest
from engine.harness import READY

pytestmark = pytest.mark.timeout(90)

FLASK_APP = """
import os

from flask import Flask, Response, jsonify, request

app = Flask(__name__)


@app.get("/hello/<name>")
def hello(name):
    return jsonify(hello=name, pid=os.getpid())


@app.post("/form")
def form():
    return f"{request.form['a']}+{request.form['b']}"


@app.get("/stream")
def stream():
    return Response((f"{n}\\n" for n in range(5)), mimetype="text/plain")
"""


def fetch(address, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection(*address, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_flask_app_through_wsgi(start_command, app_dir: Path) -> None:
    pytest.importorskip("flask")
    (app_dir / "flaskapp.py").write_text(textwrap.dedent(FLASK_APP))
    server = start_command("--wsgi", "-w", 2, "-b", "127.0.0.1:0", "flaskapp:app")
    server.wait_for_line(READY, count=2)
    workers = server.wait_for_workers(2)

    import importlib.util

    spec = importlib.util.spec_from_file_location("flaskapp_local", app_dir / "flaskapp.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    client = module.app.test_client()

    status, headers, body = fetch(server.address, "GET", "/hello/world")
    expected = client.get("/hello/world")
    assert status == expected.status_code == 200
    assert headers["Content-Type"] == expected.headers["Content-Type"]
    answer = json.loads(body)
    assert answer["hello"] == "world" and answer["pid"] in workers

    form = urllib.parse.urlencode({"a": "1", "b": "2"})
    status, _, body = fetch(server.address, "POST", "/form", form,
                            {"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert (status, body) == (200, client.post("/form", data={"a": "1", "b": "2"}).data)

    status, headers, body = fetch(server.address, "GET", "/stream")
    assert status == 200 and body == b"0\n1\n2\n3\n4\n"
    assert headers.get("Transfer-Encoding") == "chunked"

    status, _, body = fetch(server.address, "GET", "/missing")
    missing = client.get("/missing")
    assert status == missing.status_code == 404 and body == missing.data

    status, headers, body = fetch(server.address, "HEAD", "/hello/world")
    assert status == 200 and body == b""


def test_wsgi_on_a_unix_socket(start_command, app_dir: Path) -> None:
    path = app_dir / "w.sock"
    server = start_command("--wsgi", "-w", 1, "-b", f"unix:{path}", "myapp:wsgi_app")
    server.wait_for_line(READY)
    import socket

    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(20)
        client.connect(str(path))
        client.sendall(b"GET /via-unix HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := client.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b" /via-unix\n"), reply
