"""A real Django project on ``prefork --wsgi``, configured by a gunicorn-style config file.

The project preloads in the master, which opens its database connection there (as a
Django app that touches the database at import does); the ``post_fork`` hook of the
config file closes the connection each worker inherited, which is what gunicorn users
write in their ``gunicorn.conf.py``.
"""

from __future__ import annotations

import json
import signal
import textwrap
import urllib.request
from pathlib import Path

import pytest
from engine.harness import wait_until

pytest.importorskip("django")

SETTINGS = """
from pathlib import Path

SECRET_KEY = "test-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "mysite.urls"
INSTALLED_APPS = []
MIDDLEWARE = []
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(Path(__file__).resolve().parent.parent / "db.sqlite3"),
    }
}
USE_TZ = True
"""

URLS = """
import os

from django.db import connection, transaction
from django.http import HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def hit(request):
    with transaction.atomic(), connection.cursor() as cursor:
        if request.method == "POST":
            cursor.execute("INSERT INTO hits (pid) VALUES (%s)", [os.getpid()])
        cursor.execute("SELECT COUNT(*) FROM hits")
        (count,) = cursor.fetchone()
    return JsonResponse({"pid": os.getpid(), "count": count})


def broken(request):
    raise RuntimeError("a bug in a Django view")


urlpatterns = [path("hit", hit), path("broken", broken)]
"""

WSGI = """
from django.core.wsgi import get_wsgi_application
from django.db import connection

application = get_wsgi_application()

# Touching the database at import time, as many projects do: with --preload this
# connection is opened in the master and inherited by every worker.
with connection.cursor() as cursor:
    cursor.execute("CREATE TABLE IF NOT EXISTS hits (id INTEGER PRIMARY KEY, pid INTEGER)")
"""

CONFIG = """
import json
import os

bind = "127.0.0.1:0"
workers = 2
threads = 2
wsgi = True
preload = True
raw_env = ["DJANGO_SETTINGS_MODULE=mysite.settings"]


def post_fork(server, worker):
    from django import db

    inherited = db.connection.connection is not None
    db.connections.close_all()
    with open(os.environ["HOOK_RECORD"], "a") as file:
        file.write(json.dumps({"pid": os.getpid(), "inherited": inherited}) + "\\n")
"""


def request(address: tuple[str, int], path: str, method: str = "GET") -> tuple[int, bytes]:
    url = f"http://{address[0]}:{address[1]}{path}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def test_django_with_preload_and_a_post_fork_hook_closing_connections(
    start_command, app_dir: Path
) -> None:
    package = app_dir / "mysite"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, text in (("settings", SETTINGS), ("urls", URLS), ("wsgi", WSGI)):
        (package / f"{name}.py").write_text(textwrap.dedent(text))
    (app_dir / "prefork.conf.py").write_text(textwrap.dedent(CONFIG))
    record = app_dir / "post_fork.jsonl"
    command = start_command("mysite.wsgi:application", env={"HOOK_RECORD": str(record)})
    workers = command.wait_for_workers(2)
    wait_until(lambda: record.exists() and len(record.read_text().splitlines()) == 2)
    forks = [json.loads(line) for line in record.read_text().splitlines()]
    assert {fork["pid"] for fork in forks} == workers
    assert all(fork["inherited"] for fork in forks), forks

    answers = [json.loads(request(command.address, "/hit", "POST")[1]) for _ in range(20)]
    assert [answer["count"] for answer in answers] == list(range(1, 21))
    assert {answer["pid"] for answer in answers} <= workers
    # A view that raises: Django's own 500 page, logged by Django, the worker serves on.
    status, _ = request(command.address, "/broken")
    assert status == 500
    status, body = request(command.address, "/hit")
    assert status == 200 and json.loads(body)["count"] == 20
    assert command.worker_pids() == workers
    command.send(signal.SIGTERM)
    assert command.wait_exit() == 0
