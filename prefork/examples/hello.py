"""A hello-world HTTP server: ``python -m prefork.examples.hello [--host H] [--port P]``.

An unchanged ``http.server.BaseHTTPRequestHandler`` on a prefork server.
Try ``curl http://127.0.0.1:8000/``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server

import prefork


class HelloHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with a short plain-text greeting."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"Hello, world!\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class HelloServer(prefork.ThreadingMixIn, http.server.HTTPServer):
    """``http.server.HTTPServer`` with prefork's thread-per-connection mixin."""

    daemon_threads = True


def main(argv: list[str] | None = None) -> None:
    """Parse ``--host``/``--port`` and serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    try:
        server = HelloServer((args.host, args.port), HelloHandler)
    except OSError as exc:
        parser.exit(1, f"prefork.examples.hello: cannot bind {args.host}:{args.port}: {exc}\n")
    with server:
        host, port = server.socket.getsockname()[:2]
        print(f"Serving HTTP on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()


if __name__ == "__main__":
    main()
