"""The same handler served by a master and a pool of worker processes."""

from migrate_echo_server import EchoHandler

import prefork as socketserver

HOST = "127.0.0.1"
PORT = 9999


class EchoServer(socketserver.PreforkMixIn, socketserver.TCPServer):
    workers = 2  # processes (default: one per CPU)
    threads = 8  # connections each worker serves at once
    allow_reuse_address = True


if __name__ == "__main__":
    with EchoServer((HOST, PORT), EchoHandler) as server:
        server.serve_forever()
