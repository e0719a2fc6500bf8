"""The SocketServer documentation examples, ported to Python 3, run on prefork.

The servers are the documented handler classes served in-process (port 0 instead of
9999, 127.0.0.1 instead of localhost); the clients are the documented client scripts
run as real subprocesses with the words on their command line, as in the docs'
``$ python TCPClient.py hello world with TCP``.  The ThreadingMixIn example is a
complete program and runs as a subprocess with ``import prefork as socketserver``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import LOCALHOST, TIMEOUT, serving

import prefork as socketserver


class MyTCPHandler(socketserver.BaseRequestHandler):
    """
    The request handler class for our server.

    It is instantiated once per connection to the server, and must
    override the handle() method to implement communication to the
    client.
    """

    def handle(self) -> None:
        # self.request is the TCP socket connected to the client
        self.data = self.request.recv(1024).strip()
        print(f"{self.client_address[0]} wrote:")
        print(self.data)
        # just send back the same data, but upper-cased
        self.request.sendall(self.data.upper())


class MyStreamTCPHandler(socketserver.StreamRequestHandler):
    """The alternative handler of the TCP example, using rfile and wfile."""

    def handle(self) -> None:
        # self.rfile is a file-like object created by the handler;
        # we can now use e.g. readline() instead of raw recv() calls
        self.data = self.rfile.readline().strip()
        print(f"{self.client_address[0]} wrote:")
        print(self.data)
        # Likewise, self.wfile is a file-like object used to write back
        # to the client
        self.wfile.write(self.data.upper())


class MyUDPHandler(socketserver.BaseRequestHandler):
    """
    This class works similar to the TCP handler class, except that
    self.request consists of a pair of data and client socket, and since
    there is no connection the client address must be given explicitly
    when sending data back via sendto().
    """

    def handle(self) -> None:
        data = self.request[0].strip()
        socket = self.request[1]
        print(f"{self.client_address[0]} wrote:")
        print(data)
        socket.sendto(data.upper(), self.client_address)


TCP_CLIENT = """
import socket
import sys

HOST, PORT = "127.0.0.1", {port}
data = " ".join(sys.argv[1:])

# Create a socket (SOCK_STREAM means a TCP socket)
with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    # Connect to server and send data
    sock.connect((HOST, PORT))
    sock.sendall(bytes(data + "\\n", "utf-8"))

    # Receive data from the server and shut down
    received = str(sock.recv(1024), "utf-8")

print("Sent:     {{}}".format(data))
print("Received: {{}}".format(received))
"""

UDP_CLIENT = """
import socket
import sys

HOST, PORT = "127.0.0.1", {port}
data = " ".join(sys.argv[1:])

# SOCK_DGRAM is the socket type to use for UDP sockets
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

# As you can see, there is no connect() call; UDP has no connections.
# Instead, data is directly sent to the recipient via sendto().
sock.sendto(bytes(data + "\\n", "utf-8"), (HOST, PORT))
received = str(sock.recv(1024), "utf-8")

print("Sent:     {{}}".format(data))
print("Received: {{}}".format(received))
"""

THREADED_EXAMPLE = """
import socket
import threading
import prefork as socketserver

class ThreadedTCPRequestHandler(socketserver.BaseRequestHandler):

    def handle(self):
        data = str(self.request.recv(1024), 'ascii')
        cur_thread = threading.current_thread()
        response = bytes("{{}}: {{}}".format(cur_thread.name, data), 'ascii')
        self.request.sendall(response)

class ThreadedTCPServer(socketserver.{mixin}, socketserver.TCPServer):
    pass

def client(ip, port, message):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.connect((ip, port))
        sock.sendall(bytes(message, 'ascii'))
        response = str(sock.recv(1024), 'ascii')
        print("Received: {{}}".format(response))

if __name__ == "__main__":
    # Port 0 means to select an arbitrary unused port
    HOST, PORT = "127.0.0.1", 0

    server = ThreadedTCPServer((HOST, PORT), ThreadedTCPRequestHandler)
    with server:
        ip, port = server.server_address

        # Start a thread with the server -- that thread will then start one
        # more thread for each request
        server_thread = threading.Thread(target=server.serve_forever)
        # Exit the server thread when the main thread terminates
        server_thread.daemon = True
        server_thread.start()
        print("Server loop running in thread:", server_thread.name)

        client(ip, port, "Hello World 1")
        client(ip, port, "Hello World 2")
        client(ip, port, "Hello World 3")

        server.shutdown()
"""


def run_script(path: Path, source: str, *args: str) -> str:
    """Write ``source`` to ``path``, run it with this Python, return its stdout."""
    path.write_text(textwrap.dedent(source))
    env = dict(os.environ)
    # The child must import the same prefork as the tests do.
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(socketserver.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        timeout=6 * TIMEOUT,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


@pytest.mark.parametrize("handler", [MyTCPHandler, MyStreamTCPHandler])
def test_tcp_server_example(
    handler: type, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The TCPServer example: both handlers upper-case what each client sends."""
    with socketserver.TCPServer((LOCALHOST, 0), handler) as server, serving(server):
        client = TCP_CLIENT.format(port=server.server_address[1])
        out1 = run_script(tmp_path / "TCPClient.py", client, "hello", "world", "with", "TCP")
        out2 = run_script(tmp_path / "TCPClient.py", client, "python", "is", "nice")
    assert out1 == "Sent:     hello world with TCP\nReceived: HELLO WORLD WITH TCP\n"
    assert out2 == "Sent:     python is nice\nReceived: PYTHON IS NICE\n"
    assert capsys.readouterr().out == (
        "127.0.0.1 wrote:\nb'hello world with TCP'\n127.0.0.1 wrote:\nb'python is nice'\n"
    )


def test_udp_server_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The UDPServer example: output exactly like the TCP example's."""
    with socketserver.UDPServer((LOCALHOST, 0), MyUDPHandler) as server, serving(server):
        client = UDP_CLIENT.format(port=server.server_address[1])
        out1 = run_script(tmp_path / "UDPClient.py", client, "hello", "world", "with", "UDP")
        out2 = run_script(tmp_path / "UDPClient.py", client, "python", "is", "nice")
    assert out1 == "Sent:     hello world with UDP\nReceived: HELLO WORLD WITH UDP\n"
    assert out2 == "Sent:     python is nice\nReceived: PYTHON IS NICE\n"
    assert capsys.readouterr().out == (
        "127.0.0.1 wrote:\nb'hello world with UDP'\n127.0.0.1 wrote:\nb'python is nice'\n"
    )


def test_threading_mixin_example(tmp_path: Path) -> None:
    """The asynchronous ThreadingMixIn example: each request in a thread of its own."""
    out = run_script(
        tmp_path / "ThreadedTCPServer.py", THREADED_EXAMPLE.format(mixin="ThreadingMixIn")
    )
    lines = out.splitlines()
    assert len(lines) == 4, out
    first = re.fullmatch(r"Server loop running in thread: (Thread-1\b.*)", lines[0])
    assert first, lines[0]
    names = []
    for i, line in enumerate(lines[1:], start=1):
        match = re.fullmatch(rf"Received: (Thread-\d+\b.*): Hello World {i}", line)
        assert match, line
        names.append(match.group(1))
    assert len(set(names)) == 3 and first.group(1) not in names


def test_forking_mixin_example(tmp_path: Path) -> None:
    """The ForkingMixIn variant ("used in the same way"): the same program, forking."""
    out = run_script(
        tmp_path / "ForkingTCPServer.py", THREADED_EXAMPLE.format(mixin="ForkingMixIn")
    )
    lines = out.splitlines()
    assert len(lines) == 4, out
    assert lines[0].startswith("Server loop running in thread: Thread-1")
    for i, line in enumerate(lines[1:], start=1):
        assert re.fullmatch(rf"Received: .+: Hello World {i}", line), line
