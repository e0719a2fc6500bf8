"""A UDP server that answers each datagram with its content in upper case."""

import prefork as socketserver

HOST = "localhost"
PORT = 9999


class UpperCaseHandler(socketserver.BaseRequestHandler):
    """Serves one datagram: ``self.request`` is the pair (data, socket)."""

    def handle(self):
        data, sock = self.request
        sock.sendto(data.upper(), self.client_address)


if __name__ == "__main__":
    with socketserver.UDPServer((HOST, PORT), UpperCaseHandler) as server:
        server.serve_forever()
