"""Single-process peers, run as ``python -m bench.servers KIND [--port 0]``.

Each binds 127.0.0.1 (port 0 by default), prints ``listening on HOST:PORT`` on standard
output and serves until killed.  The standard library's servers are used unchanged; the
forking comparison puts ``prefork.ForkingMixIn`` on the same ``http.server.HTTPServer``.
"""

from __future__ import annotations

import argparse
import http.server
import socketserver
import sys
from collections.abc import Callable
from typing import Any

from bench.apps import EchoHandler, HelloHandler, UDPEchoHandler


def _stdlib_forking_http() -> type[Any]:
    class Server(socketserver.ForkingMixIn, http.server.HTTPServer):
        pass

    return Server


def _prefork_forking_http() -> type[Any]:
    import prefork

    class Server(prefork.ForkingMixIn, http.server.HTTPServer):
        pass

    return Server


SERVERS: dict[str, tuple[Callable[[], type[Any]], type[Any]]] = {
    "stdlib-threading-http": (lambda: http.server.ThreadingHTTPServer, HelloHandler),
    "stdlib-forking-http": (_stdlib_forking_http, HelloHandler),
    "prefork-forking-http": (_prefork_forking_http, HelloHandler),
    "stdlib-threading-tcp": (lambda: socketserver.ThreadingTCPServer, EchoHandler),
    "stdlib-forking-tcp": (lambda: socketserver.ForkingTCPServer, EchoHandler),
    "stdlib-threading-udp": (lambda: socketserver.ThreadingUDPServer, UDPEchoHandler),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(SERVERS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    factory, handler = SERVERS[args.kind]
    server_class = factory()
    server = server_class((args.host, args.port), handler)
    host, port = server.server_address[:2]
    print(f"listening on {host}:{port}", flush=True)
    with server:
        server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
