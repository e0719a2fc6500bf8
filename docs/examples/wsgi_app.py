"""A small WSGI application: ``prefork --wsgi wsgi_app:app`` (run from this directory).

``/healthz`` answers ``ok`` for load balancer and Kubernetes probes; every
other path says which worker process served it.
"""

import os


def app(environ, start_response):
    """Answer every request with a short plain-text body."""
    if environ["PATH_INFO"] == "/healthz":
        body = b"ok\n"
    else:
        body = f"Hello from worker {os.getpid()}\n".encode()
    start_response(
        "200 OK",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]
