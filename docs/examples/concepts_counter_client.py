"""Send requests to concepts_counter_server.py, each on a new connection."""

import http.client

HOST = "127.0.0.1"
PORT = 9999
REQUESTS = 20


def get(path):
    connection = http.client.HTTPConnection(HOST, PORT, timeout=10)
    try:
        connection.request("GET", path)
        return connection.getresponse().read().decode()
    finally:
        connection.close()


def total(reply):
    """The shared count in a reply such as ``worker 812: 3 here, 17 in all``."""
    return int(reply.split(", ")[1].split()[0])


first = total(get("/"))
for _ in range(REQUESTS - 2):
    get("/")
last = total(get("/"))
print(f"{REQUESTS} requests; the shared counter went up by {last - first + 1}")
