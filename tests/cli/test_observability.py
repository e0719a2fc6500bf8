"""What operators look at: ``prefork status`` and the Prometheus endpoint."""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from engine.harness import READY, http_get, wait_until

pytestmark = pytest.mark.timeout(90)

METRICS = r"master: metrics on http://(?P<host>[\d.]+):(?P<port>\d+)/metrics"
SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>[-+0-9.eEinfNa]+)$")


def scrape(host: str, port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """GET /metrics and parse the Prometheus text into ``{name: [(labels, value)]}``."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    finally:
        conn.close()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            assert not line or re.match(r"^# (HELP|TYPE) [a-z_]+ ", line), line
            continue
        match = SAMPLE.match(line)
        assert match, f"not Prometheus text: {line!r}"
        labels = dict(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', match["labels"] or ""))
        samples.setdefault(match["name"], []).append((labels, float(match["value"])))
    return samples


def test_status_json_lists_the_workers(start_command, app_dir: Path) -> None:
    pidfile = app_dir / "app.pid"
    server = start_command("-w", 2, "-b", "127.0.0.1:0", "-p", pidfile, "myapp:Hello")
    server.wait_for_line(READY, count=2)
    workers = server.wait_for_workers(2)
    http_get(server.address, "/")
    result = subprocess.run(
        [sys.executable, "-m", "prefork", "status", "--pid", str(pidfile), "--json"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["master"]["pid"] == server.pid
    assert {worker["pid"] for worker in status["workers"]} == workers
    assert sum(worker["requests"] for worker in status["workers"]) >= 1
    assert all(worker["threads"] == 4 for worker in status["workers"])


def test_metrics_answer_while_every_worker_is_stuck(start_command) -> None:
    server = start_command("-w", 1, "--threads", 1, "-t", 300, "-b", "127.0.0.1:0",
                           "--metrics-bind", "127.0.0.1:0", "myapp:Hello")  # fmt: skip
    server.wait_for_line(READY)
    where = server.wait_for_line(METRICS)[0]
    host, port = where["host"], int(where["port"])
    samples = scrape(host, port)
    assert samples["prefork_workers_target"][0][1] == 1
    ready = [value for labels, value in samples["prefork_workers"] if labels["state"] == "ready"]
    assert ready == [1]
    stuck = http.client.HTTPConnection(*server.address, timeout=30)
    try:
        stuck.request("GET", "/hang")
        wait_until(lambda: scrape(host, port)["prefork_threads_busy"][0][1] == 1, 20,
                   "the hung request to show as busy")  # fmt: skip
        samples = scrape(host, port)
        assert samples["prefork_threads_idle"][0][1] == 0
        assert {labels["cause"] for labels, _ in samples["prefork_worker_restarts_total"]} >= {
            "crash", "timeout", "reload", "max_requests", "memory"
        }  # fmt: skip
    finally:
        stuck.close()
    server.send(signal.SIGINT)
    server.wait_exit()
