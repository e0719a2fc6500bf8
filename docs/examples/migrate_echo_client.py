"""Talk to migrate_echo_server.py, or to migrate_prefork_echo_server.py."""

import socket

HOST = "127.0.0.1"
PORT = 9999

with socket.create_connection((HOST, PORT), timeout=10) as connection:
    replies = connection.makefile("rb")
    for line in (b"hello\n", b"prefork\n"):
        connection.sendall(line)
        print(replies.readline().decode(), end="")
