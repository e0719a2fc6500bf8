"""A gunicorn.conf.py that prefork reads as it is: ``prefork -c migrate_gunicorn_conf.py``."""

import multiprocessing

bind = "127.0.0.1:8000"
workers = min(4, multiprocessing.cpu_count())
threads = 8
timeout = 60
graceful_timeout = 30
max_requests = 5000
max_requests_jitter = 500
raw_env = ["DJANGO_SETTINGS_MODULE=mysite.settings"]


def post_fork(server, worker):
    """Close the database connections a preloaded Django opened in the master."""
    from django import db

    db.connections.close_all()


def worker_exit(server, worker):
    server_name = server.proc_name or "prefork"
    print(f"{server_name}: worker {worker.pid} (generation {worker.generation}) exits")
