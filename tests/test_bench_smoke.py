"""Smoke test of the benchmark harness (``bench/``): ``--quick`` on three cheap cases.

It runs in this process, so the suite's leak guard sees every server and load generator
the harness starts, and checks that each was stopped and reaped.  Only that the harness
works is checked (a table, non-zero requests, no crash), never a timing; the Python load
generator is used, so neither ``wrk`` nor any other server needs to be installed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import run as bench_run  # noqa: E402

CASES = ("stdlib-threading-http", "prefork-http", "prefork-tcp")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.timeout(90)
def test_quick_run_writes_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "benchmarks.md"
    data = tmp_path / "results.json"
    argv = ["--quick", "--loadgen", "python", "--cases", ",".join(CASES), "--out", str(out),
            "--json", str(data), "--no-plots"]  # fmt: skip

    assert bench_run.main(argv) == 0

    results = json.loads(data.read_text())
    assert set(results["cases"]) == set(CASES)
    for name in CASES:
        entry = results["cases"][name]
        assert entry["status"] == "ok", (name, entry["reason"], entry["failures"])
        (row,) = entry["runs"]
        assert row["requests"] > 0, (name, row)
        assert row["rps"] > 0, (name, row)
        assert _gone(row["pid"]), f"{name}: server {row['pid']} still running"
    report = out.read_text()
    for name in CASES:
        assert f"| `{name}` |" in report
    assert "| case | server | req/s (median) |" in report
    assert "prefork-http" in capsys.readouterr().out


def test_unknown_case_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "benchmarks.md"
    assert bench_run.main(["--quick", "--cases", "no-such-case", "--out", str(out)]) == 2
    assert "no-such-case" in capsys.readouterr().err
    assert not out.exists()
