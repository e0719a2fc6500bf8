"""The standard library's file server, unchanged, on 4 worker processes x 8 threads."""

import http.server

import prefork

HOST = "127.0.0.1"
PORT = 8000


class Server(prefork.PreforkMixIn, http.server.HTTPServer):
    workers = 4  # processes (default: number of CPUs)
    threads = 8  # threads per worker


if __name__ == "__main__":
    with Server((HOST, PORT), http.server.SimpleHTTPRequestHandler) as server:
        server.serve_forever()  # the master's supervision loop
