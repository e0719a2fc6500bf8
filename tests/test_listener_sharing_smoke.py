"""Smoke test of ``python -m bench.listener_sharing``: it runs, measures, and reaps its workers.

Only the connection-per-request load (the Python load generator, no ``wrk``), two workers,
two modes, one short run: that the script works is checked, never a timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
def test_a_short_run_measures_every_mode_and_leaves_no_process(tmp_path: Path) -> None:
    data = tmp_path / "ls.json"
    argv = [sys.executable, "-m", "bench.listener_sharing", "--loads", "close", "--workers", "2",
            "--modes", "shared,reuseport", "--balance", "even,uneven", "--runs", "1",
            "--duration", "0.5", "--warmup", "0.2", "--json", str(data)]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the script and its workers
            proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]

    rows = json.loads(data.read_text())
    assert {(r["balance"], r["mode"]) for r in rows} == {
        (balance, mode) for balance in ("even", "uneven") for mode in ("shared", "reuseport")
    }
    for row in rows:
        (run,) = row["runs"]
        assert run["rps"] > 0, row
        assert len(run["shares"]) == 2, row  # both workers reported their counts
    assert "| even | close | 2 | shared |" in out.decode()
    assert not _in_session(proc.pid), "workers outlived the script"


def _in_session(session: int) -> list[int]:
    """The live processes of ``session`` (the script was started as its leader)."""
    found = []
    for pid in psutil.pids():
        try:
            if os.getsid(pid) == session and psutil.Process(pid).status() != "zombie":
                found.append(pid)
        except (OSError, psutil.Error):
            continue
    return found
