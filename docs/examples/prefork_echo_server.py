"""The TCP server of tcp_echo_server.py on a master and a pool of worker processes."""

from tcp_echo_server import HOST, UpperCaseHandler

import prefork as socketserver

PORT = 9999


class Server(socketserver.PreforkMixIn, socketserver.TCPServer):
    workers = 2  # worker processes (default: one per CPU)
    threads = 4  # threads per worker: connections each worker serves at once


if __name__ == "__main__":
    with Server((HOST, PORT), UpperCaseHandler) as server:
        server.serve_forever()  # the master supervises until SIGTERM or Ctrl-C
