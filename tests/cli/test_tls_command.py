"""The real ``prefork`` command serving TLS: a handshake per request, a silent peer bounded."""

from __future__ import annotations

import http.client
import shutil
import signal
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from engine.harness import DEADLINE, wait_until

from cli.harness import CommandProcess

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _make_certificate(directory: Path, name: str = "cert") -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN=127.0.0.1/O={name}", "-addext", "subjectAltName=IP:127.0.0.1",
         # A self-signed certificate that is its own CA, as Python 3.13's strict checks want.
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _make_certificate(tmp_path_factory.mktemp("tls-command"))


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


def _served_certificate(address: tuple[str, int]) -> bytes:
    """The certificate the server presents now, as DER (not verified: it changes)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(address, timeout=20) as plain,
        context.wrap_socket(plain) as tls,
    ):
        served = tls.getpeercert(binary_form=True)
    assert served is not None
    return served


def _der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


def test_hup_serves_the_certificate_now_in_the_files(tmp_path: Path) -> None:
    """Renewing a certificate (certbot, say) needs no restart: HUP starts workers that read
    the files again, as gunicorn's reload does."""
    old_cert, old_key = _make_certificate(tmp_path, "old")
    new_cert, new_key = _make_certificate(tmp_path, "new")
    certfile, keyfile = tmp_path / "server.pem", tmp_path / "server-key.pem"
    shutil.copy(old_cert, certfile)
    shutil.copy(old_key, keyfile)
    server = CommandProcess(
        "-w", 2, "-b", "127.0.0.1:0", "--certfile", certfile, "--keyfile", keyfile,
        "prefork.examples.hello:HelloHandler", cwd=tmp_path,
    )  # fmt: skip
    with server:
        server.start()
        assert _served_certificate(server.address) == _der(old_cert)
        shutil.copy(new_cert, certfile)
        shutil.copy(new_key, keyfile)
        server.send(signal.SIGHUP)
        # Until the first generation has gone, a connection may still reach one of its
        # workers (and its certificate): wait for two new workers and nothing else.
        wait_until(
            lambda: (
                set(server.ready_workers(generation=2)) == server.worker_pids()
                and len(server.worker_pids()) == 2
            ),
            DEADLINE,
            "only the two workers of the new generation",
            server.tail,
        )
        assert _served_certificate(server.address) == _der(new_cert)
        assert _get(server.address, new_cert).startswith("Hello")
