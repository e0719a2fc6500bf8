"""HTTP/1.1 for WSGI applications: head parsing, request bodies, responses and the WSGI adapter.

Layer three of four (``core`` < ``engine`` < ``http`` < ``ops``): its server
is a :class:`prefork.core.server.TCPServer`, and under the engine its
connections are parked between requests by :mod:`prefork.engine.keepalive`.

* :mod:`prefork.http.parser`: the request head, read and parsed into the environ;
* :mod:`prefork.http.body`: the request body readers behind ``wsgi.input``;
* :mod:`prefork.http.response`: the response, its framing, and error responses;
* :mod:`prefork.http.wsgi`: the WSGI server and the request handler that adapts the rest.

The public names load lazily, so that importing one module (the parser) does
not load the adapter.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefork.http.wsgi import FileWrapper, WSGIRequestHandler, WSGIServer, make_server

_PUBLIC = frozenset({"FileWrapper", "WSGIRequestHandler", "WSGIServer", "make_server"})

__all__ = ["FileWrapper", "WSGIRequestHandler", "WSGIServer", "make_server"]


def __getattr__(name: str) -> object:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'prefork.http' has no attribute {name!r}")
    return getattr(importlib.import_module("prefork.http.wsgi"), name)
