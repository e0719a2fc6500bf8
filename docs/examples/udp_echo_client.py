"""Sends a datagram to the UDP server and prints the reply."""

import socket

HOST = "localhost"
PORT = 9999

with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    sock.settimeout(10)
    sock.sendto(b"hello, prefork", (HOST, PORT))
    reply, _ = sock.recvfrom(1024)
    print("received:", reply.decode())
