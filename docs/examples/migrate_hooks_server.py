"""gunicorn's server hooks, written as methods of a prefork server.

The master never imports the application: each worker imports it in
``post_fork``, so ``kill -HUP`` (a new generation of workers) serves new code.
"""

import importlib
import logging

import prefork
from prefork.http.wsgi import WSGIRequestHandler, WSGIServer

HOST = "127.0.0.1"
PORT = 9999

log = logging.getLogger("migrate_hooks")


class Server(prefork.PreforkMixIn, WSGIServer):
    workers = 2
    threads = 4
    graceful_timeout = 10

    def when_ready(self):  # master, before the first fork (gunicorn: when_ready)
        log.info("master ready on %s", self.server_address)

    def pre_fork(self, worker):  # master, just before each fork (gunicorn: pre_fork)
        log.info("forking worker %d of generation %d", worker.index, worker.generation)

    def post_fork(self, worker):  # in the new worker (gunicorn: post_fork, post_worker_init)
        self.set_app(importlib.import_module("wsgi_app").app)
        log.info("worker %d (pid %d) loaded the application", worker.index, worker.pid)

    def worker_exit(self, worker):  # in the worker, as it leaves (gunicorn: worker_exit)
        log.info("worker %d (pid %d) exits", worker.index, worker.pid)

    def on_reload(self):  # master, on HUP (gunicorn: on_reload)
        log.info("reloading")

    def workers_ready(self):  # master, whenever the pool is complete and current
        log.info("every worker is ready")

    def on_shutdown(self):  # master, when a stop begins
        log.info("shutting down")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="[%(process)d] %(message)s")
    with Server((HOST, PORT), WSGIRequestHandler) as server:
        server.serve_forever()
