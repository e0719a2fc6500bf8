"""A TCP server that answers each line a client sends with the line in upper case."""

import prefork as socketserver

HOST = "localhost"
PORT = 9999


class UpperCaseHandler(socketserver.StreamRequestHandler):
    """Serves one connection: reads lines until the client closes it."""

    def handle(self):
        for line in self.rfile:
            self.wfile.write(line.upper())


if __name__ == "__main__":
    with socketserver.TCPServer((HOST, PORT), UpperCaseHandler) as server:
        server.serve_forever()  # until interrupted (Ctrl-C)
