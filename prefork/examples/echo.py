"""A TCP echo server: ``python -m prefork.examples.echo [--host H] [--port P]``.

Each line a client sends comes back unchanged.  Try ``nc 127.0.0.1 9000``.
"""

from __future__ import annotations

import argparse
import contextlib

import prefork


class EchoHandler(prefork.StreamRequestHandler):
    """Echoes lines until the client closes the connection."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class EchoServer(prefork.ThreadingTCPServer):
    """A threaded TCP server for :class:`EchoHandler`."""

    daemon_threads = True
    allow_reuse_address = True


def main(argv: list[str] | None = None) -> None:
    """Parse ``--host``/``--port`` and serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)
    try:
        server = EchoServer((args.host, args.port), EchoHandler)
    except OSError as exc:
        parser.exit(1, f"prefork.examples.echo: cannot bind {args.host}:{args.port}: {exc}\n")
    with server:
        host, port = server.socket.getsockname()[:2]
        print(f"Echoing on {host}:{port} (Ctrl-C to stop)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()


if __name__ == "__main__":
    main()
