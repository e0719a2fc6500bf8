"""A socketserver program moved to prefork by changing one import.

With ``import socketserver`` it runs on the standard library; with the line
below it runs on prefork, unchanged otherwise.
"""

import prefork as socketserver

HOST = "127.0.0.1"
PORT = 9999


class EchoHandler(socketserver.StreamRequestHandler):
    """Send every line back, upper-cased, until the client closes."""

    def handle(self):
        for line in self.rfile:
            self.wfile.write(line.upper())


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


if __name__ == "__main__":
    with EchoServer((HOST, PORT), EchoHandler) as server:
        server.serve_forever()
