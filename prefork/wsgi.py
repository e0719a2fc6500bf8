"""The import path of :mod:`prefork.http.wsgi` in releases before the package layout.

``from prefork.wsgi import WSGIServer`` keeps working: this module re-exports the
public names of :mod:`prefork.http.wsgi`.
"""

from __future__ import annotations

from prefork.http.wsgi import (
    SERVER_SOFTWARE,
    ChunkedBodyError,
    ClientDisconnectedError,
    FileWrapper,
    WSGIRequestHandler,
    WSGIServer,
    make_server,
)

__all__ = [
    "SERVER_SOFTWARE",
    "ChunkedBodyError",
    "ClientDisconnectedError",
    "FileWrapper",
    "WSGIRequestHandler",
    "WSGIServer",
    "make_server",
]
