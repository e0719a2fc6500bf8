"""TLS server contexts, built from certificate files.

The master calls :func:`server_context` once before forking, so a missing
file or a key that does not match its certificate is a one-line
:class:`~prefork.errors.ConfigError` at startup; each worker calls it again
after the fork, so a reload (a new generation of workers) reads the files
afresh and picks up a renewed certificate.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from typing import Any

from prefork.errors import ConfigError

__all__ = ["CERT_REQS", "serve_tls", "server_context", "tls_context"]

logger = logging.getLogger("prefork.tls")  # public: docs/operations.md, Logging

#: gunicorn's ``--cert-reqs`` values: 0 none, 1 optional, 2 required.
CERT_REQS = {0: ssl.CERT_NONE, 1: ssl.CERT_OPTIONAL, 2: ssl.CERT_REQUIRED}


def server_context(
    certfile: str,
    keyfile: str | None = None,
    *,
    ca_certs: str | None = None,
    cert_reqs: int = 0,
    ciphers: str | None = None,
) -> ssl.SSLContext:
    """A server-side :class:`ssl.SSLContext` loaded from ``certfile``/``keyfile``.

    ``keyfile`` defaults to ``certfile`` (a combined PEM).  ``cert_reqs`` is
    0, 1 or 2 as gunicorn's; verifying client certificates (1 or 2) needs
    ``ca_certs``.  Raises :class:`ConfigError` for any file or value problem.
    """
    if cert_reqs not in CERT_REQS:
        raise ConfigError(f"cert-reqs: {cert_reqs!r} is not 0, 1 or 2")
    if cert_reqs and not ca_certs:
        raise ConfigError("cert-reqs 1 or 2 needs ca-certs (the CAs of client certificates)")
    for label, path in (("certfile", certfile), ("keyfile", keyfile), ("ca-certs", ca_certs)):
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"{label}: {path}: no such file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"certfile {certfile}, keyfile {keyfile or certfile}: {_reason(exc)}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"certfile/keyfile: {exc.filename}: {exc.strerror}") from None
    if ca_certs:
        try:
            context.load_verify_locations(cafile=ca_certs)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"ca-certs {ca_certs}: {_reason(exc)}") from None
    context.verify_mode = CERT_REQS[cert_reqs]
    if ciphers:
        try:
            context.set_ciphers(ciphers)
        except ssl.SSLError:
            raise ConfigError(f"ciphers: no cipher matches {ciphers!r}") from None
    return context


def _reason(exc: OSError) -> str:
    """The short reason of an SSL or OS error (``KEY_VALUES_MISMATCH``...)."""
    reason = getattr(exc, "reason", None)
    return str(reason or exc.strerror or exc).lower().replace("_", " ")


def tls_context(server: object) -> ssl.SSLContext | None:
    """The context for ``server``'s ``ssl_options`` (built anew: a worker calls it after fork)."""
    options = getattr(server, "ssl_options", None)
    return server_context(**options) if options else None


def serve_tls(
    server: Any, context: ssl.SSLContext, sock: socket.socket, client_address: Any, limit: float
) -> None:
    """Handshake on ``sock`` (at most ``limit`` seconds), then serve it as ``server`` would.

    A failed or stalled handshake (a plain-HTTP client, a refused client
    certificate, a silent peer) closes the connection; the worker serves on.
    """
    sock.settimeout(limit)
    try:
        tls_sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        tls_sock.do_handshake()
    except (OSError, ValueError) as exc:
        logger.debug("TLS handshake with %s failed: %s", client_address, exc)
        server.shutdown_request(sock)
        return
    tls_sock.settimeout(getattr(server, "io_timeout", None))
    server.process_request_thread(tls_sock, client_address)
