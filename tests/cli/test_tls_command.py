"""The real ``prefork`` command serving TLS: a handshake per request, a silent peer bounded."""

from __future__ import annotations

import http.client
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from cli.harness import CommandProcess

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls-command")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         # A self-signed certificate that is its own CA, as Python 3.13's strict checks want.
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def _get(address: tuple[str, int], cert: Path) -> str:
    context = ssl.create_default_context(cafile=str(cert))
    connection = http.client.HTTPSConnection(*address, context=context, timeout=20)
    try:
        connection.request("GET", "/")
        return connection.getresponse().read().decode()
    finally:
        connection.close()


def _received(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1000)
    except ConnectionResetError:
        return b""


def test_a_silent_peer_and_a_plain_client_do_not_stop_tls_service(
    cert: tuple[Path, Path], tmp_path: Path
) -> None:
    certfile, keyfile = cert
    server = CommandProcess(
        "-w", 1, "--threads", 1, "--header-timeout", 1, "-b", "127.0.0.1:0",
        "--certfile", certfile, "--keyfile", keyfile, "prefork.examples.hello:HelloHandler",
        cwd=tmp_path,
    )  # fmt: skip
    with server:
        server.start()
        assert _get(server.address, certfile).startswith("Hello")
        with socket.create_connection(server.address, timeout=20) as plain:
            plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert b"Hello" not in _received(plain)  # dropped: no plain HTTP on a TLS port
        with socket.create_connection(server.address, timeout=20) as silent:
            # The silent peer holds the only thread for at most header_timeout.
            assert _get(server.address, certfile).startswith("Hello")
            assert _received(silent) == b""  # and is then dropped


SCHEME_APP = """
def application(environ, start_response):
    body = f"{environ['wsgi.url_scheme']} {environ.get('HTTPS', '-')}".encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


def test_wsgi_over_tls_sees_the_https_scheme(cert: tuple[Path, Path], tmp_path: Path) -> None:
    certfile, keyfile = cert
    (tmp_path / "schemeapp.py").write_text(SCHEME_APP)
    server = CommandProcess(
        "-w", 1, "-b", "127.0.0.1:0", "--certfile", certfile, "--keyfile", keyfile,
        "--wsgi", "schemeapp:application", cwd=tmp_path,
    )  # fmt: skip
    with server:
        server.start()
        assert _get(server.address, certfile) == "https on"
