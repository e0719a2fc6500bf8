"""Two counters served by a pool of workers: one in memory, one in a shared store.

``served_here`` is a module global, so every worker process has its own copy:
it counts the requests of one worker only.  The total lives in an SQLite file
that every worker opens, so it counts them all.
"""

import http.server
import os
import sqlite3
import tempfile
import threading

import prefork

HOST = "127.0.0.1"
PORT = 9999

served_here = 0  # one copy per worker process
served_here_lock = threading.Lock()  # threads of one worker share that copy


class CounterHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        global served_here
        with served_here_lock:
            served_here += 1
            mine = served_here
        total = add_one(self.server.database)
        body = f"worker {os.getpid()}: {mine} here, {total} in all\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass  # keep the example's output quiet


def add_one(database):
    """Add one to the shared counter and return its new value (one transaction)."""
    connection = sqlite3.connect(database, timeout=10, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")  # take the write lock before reading
        connection.execute("UPDATE counter SET value = value + 1")
        (value,) = connection.execute("SELECT value FROM counter").fetchone()
        connection.execute("COMMIT")
        return value
    finally:
        connection.close()


def create_database(path):
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE counter (value INTEGER NOT NULL)")
        connection.execute("INSERT INTO counter VALUES (0)")
    connection.close()


class Server(prefork.PreforkMixIn, http.server.HTTPServer):
    workers = 2
    threads = 4


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as directory:
        database = os.path.join(directory, "counter.sqlite3")
        create_database(database)
        with Server((HOST, PORT), CounterHandler) as server:
            server.database = database  # set before the fork: every worker inherits it
            server.serve_forever()
