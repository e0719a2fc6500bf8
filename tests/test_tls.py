"""prefork.engine.tls: server contexts from certificate files, checked with a real TLS client."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefork.engine.tls import server_context
from prefork.errors import ConfigError

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _signed(pki: Path, name: str, cn: str) -> None:
    """``name.key`` and ``name.pem``, signed by the test CA, valid for 127.0.0.1."""
    _openssl(
        pki,
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={cn}",
    )
    # The extensions Python 3.13's default VERIFY_X509_STRICT checks for.
    (pki / "ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        "subjectKeyIdentifier=hash\n"
    )
    _openssl(
        pki,
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA and, signed by it, a server and a client certificate."""
    pki = tmp_path_factory.mktemp("pki")
    _openssl(
        pki,
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=prefork test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    _signed(pki, "server", "localhost")
    _signed(pki, "client", "client")
    return pki


def _client_context(pki: Path, *, cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if cert:
        context.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    return context


@pytest.fixture
def serve_once() -> Iterator[object]:
    """Run one TLS handshake + echo of a line on a loopback listener, in a thread."""
    listener = socket.create_server(("127.0.0.1", 0))
    outcome: dict[str, object] = {}
    threads: list[threading.Thread] = []

    def start(context: ssl.SSLContext) -> int:
        def serve() -> None:
            conn, _ = listener.accept()
            conn.settimeout(10)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    outcome["peer"] = tls.getpeercert()
                    tls.sendall(tls.recv(100))
            except (ssl.SSLError, OSError) as exc:
                outcome["error"] = exc
                conn.close()

        thread = threading.Thread(target=serve)
        thread.start()
        threads.append(thread)
        return int(listener.getsockname()[1])

    def finished() -> dict[str, object]:
        for thread in threads:
            thread.join(10)
        return outcome

    start.outcome = outcome  # type: ignore[attr-defined]
    start.finished = finished  # type: ignore[attr-defined]
    yield start
    for thread in threads:
        thread.join(10)
    listener.close()


def test_handshake_and_echo_with_a_real_client(pki: Path, serve_once) -> None:
    port = serve_once(server_context(str(pki / "server.pem"), str(pki / "server.key")))
    client = _client_context(pki, cert=False)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        client.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"hello\n")
        assert tls.recv(100) == b"hello\n"
        peer = tls.getpeercert()
        assert peer is not None
        assert peer["subject"] == ((("commonName", "localhost"),),)


def test_cert_reqs_2_accepts_a_signed_client_cert(pki: Path, serve_once) -> None:
    context = server_context(
        str(pki / "server.pem"), str(pki / "server.key"), ca_certs=str(pki / "ca.pem"), cert_reqs=2
    )
    port = serve_once(context)
    client = _client_context(pki, cert=True)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        client.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"x")
        assert tls.recv(100) == b"x"
    assert serve_once.finished()["peer"]["subject"] == ((("commonName", "client"),),)


def test_cert_reqs_2_refuses_a_client_without_cert(pki: Path, serve_once) -> None:
    context = server_context(
        str(pki / "server.pem"), str(pki / "server.key"), ca_certs=str(pki / "ca.pem"), cert_reqs=2
    )
    port = serve_once(context)
    client = _client_context(pki, cert=False)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        pytest.raises((ssl.SSLError, OSError)),
        client.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        # TLS 1.3: the server's refusal arrives after the client's handshake.
        tls.sendall(b"x")
        tls.recv(100)
    assert isinstance(serve_once.finished().get("error"), ssl.SSLError)


@pytest.mark.parametrize(
    ("files", "kwargs", "message"),
    [
        (("missing.pem", "server.key"), {}, "missing.pem: no such file"),
        (("server.pem", "client.key"), {}, "key values mismatch"),
        (("server.pem", "server.key"), {"cert_reqs": 3}, "is not 0, 1 or 2"),
        (("server.pem", "server.key"), {"cert_reqs": 2}, "needs ca-certs"),
        (("server.pem", "server.key"), {"ca_certs": "nope.pem"}, "nope.pem: no such file"),
        (("server.pem", "server.key"), {"ciphers": "NOT-A-CIPHER"}, "no cipher matches"),
        (("server.key", "server.key"), {}, "certfile"),
    ],
)
def test_bad_files_or_values_are_one_line_config_errors(
    pki: Path, files: tuple[str, str], kwargs: dict, message: str
) -> None:
    kwargs = {k: str(pki / v) if k == "ca_certs" else v for k, v in kwargs.items()}
    with pytest.raises(ConfigError) as info:
        server_context(str(pki / files[0]), str(pki / files[1]), **kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
