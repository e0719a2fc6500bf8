"""Sends two lines to the TCP server and prints what comes back."""

import socket

HOST = "localhost"
PORT = 9999

with socket.create_connection((HOST, PORT), timeout=10) as sock, sock.makefile("rb") as replies:
    for line in [b"hello, prefork\n", b"one line at a time\n"]:
        sock.sendall(line)
        print("sent:    ", line.decode().rstrip())
        print("received:", replies.readline().decode().rstrip())
