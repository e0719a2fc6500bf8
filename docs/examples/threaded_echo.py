"""A threaded TCP server and three clients in one program.

The server runs in a background thread and serves each connection in a thread of
its own, so the clients can be answered in any order.
"""

import socket
import threading

import prefork as socketserver


class UpperCaseHandler(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline()
        self.wfile.write(line.upper())


class ThreadedTCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True  # do not wait for request threads at exit


def main():
    # Port 0: the system picks a free port; server_address tells which.
    with ThreadedTCPServer(("localhost", 0), UpperCaseHandler) as server:
        serving = threading.Thread(target=server.serve_forever)
        serving.start()
        try:
            clients = [
                socket.create_connection(server.server_address, timeout=10) for _ in range(3)
            ]
            # Speak on the last connection first: a server handling one connection
            # at a time would still be waiting for the first client to say something.
            for number in reversed(range(3)):
                with clients[number] as sock, sock.makefile() as replies:
                    sock.sendall(f"hello from client {number}\n".encode())
                    print(replies.readline(), end="")
        finally:
            server.shutdown()
            serving.join()


if __name__ == "__main__":
    main()
