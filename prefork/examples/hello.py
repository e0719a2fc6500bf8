"""A hello-world HTTP server: ``python -m prefork.examples.hello [--host H] [--port P]``.

An unchanged ``http.server.BaseHTTPRequestHandler`` served by a prefork master
with two worker processes.  Try ``curl http://127.0.0.1:8000/``; Ctrl-C (or
``SIGTERM``) stops it, ``SIGHUP`` reloads the workers, ``SIGTTIN``/``SIGTTOU``
add or remove one.
"""

from __future__ import annotations

import argparse
import http.server
import logging
import os

import prefork


class HelloHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with a short plain-text greeting."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = f"Hello, world! (worker pid {os.getpid()})\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class HelloServer(prefork.PreforkMixIn, http.server.HTTPServer):
    """``http.server.HTTPServer`` run by a prefork master: 2 workers x 4 threads."""

    workers = 2
    threads = 4


def main(argv: list[str] | None = None) -> None:
    """Parse ``--host``/``--port`` and serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=HelloServer.workers)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] %(message)s")
    try:
        server = HelloServer((args.host, args.port), HelloHandler, workers=args.workers)
    except OSError as exc:
        parser.exit(1, f"prefork.examples.hello: cannot bind {args.host}:{args.port}: {exc}\n")
    with server:
        host, port = server.socket.getsockname()[:2]
        print(f"Serving HTTP on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
