"""Ask migrate_hooks_server.py for its health route."""

import http.client

HOST = "127.0.0.1"
PORT = 9999

connection = http.client.HTTPConnection(HOST, PORT, timeout=10)
connection.request("GET", "/healthz")
response = connection.getresponse()
print(response.status, response.read().decode(), end="")
connection.close()
