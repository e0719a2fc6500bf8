"""CPython's own server test suites, run against prefork and compared with the stdlib.

Each test item runs one suite twice, concurrently and in isolated subprocesses
(``run_suite.py --impl stdlib`` as the baseline and ``--impl prefork``), then
asserts that prefork has no failure or error, passes every test the stdlib
passes (except those in ``skips.py``) and runs the same number of tests.
The side-by-side counts are printed (see them with ``-rA``) and written to
``counts.json`` in the item's tmp dir.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest


def _load_runner() -> ModuleType:
    """Import the sibling run_suite.py by path (works with any import mode)."""
    path = Path(__file__).resolve().with_name("run_suite.py")
    spec = importlib.util.spec_from_file_location("_conformance_run_suite", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


rs = _load_runner()

COUNT_KEYS = ("ran", "passed", "failures", "errors", "skipped_suite", "skipped_listed")
TAIL_LINES = 80
# Margin over the subprocess timeout for killing, reaping and reporting.
PYTEST_MARGIN = 60


@pytest.mark.parametrize(
    "suite",
    [
        pytest.param(s, id=s, marks=pytest.mark.timeout(rs.SUITE_TIMEOUTS[s] + PYTEST_MARGIN))
        for s in rs.SUITES
    ],
)
def test_suite_conforms(suite: str, tmp_path: Path) -> None:
    """test.<suite> passes on prefork exactly as it does on the stdlib socketserver."""
    if importlib.util.find_spec(f"test.{suite}") is None:
        pytest.skip(f"CPython's test suite is not installed (no module test.{suite})")
    skips = rs.load_skips()
    stdlib, prefork = rs.run_pair(suite, tmp_path)

    counts = {
        o.impl: {k: o.counts(k) for k in COUNT_KEYS} | {"wall_s": o.wall}
        for o in (stdlib, prefork)
    }
    (tmp_path / "counts.json").write_text(json.dumps(counts, indent=2), encoding="utf-8")
    print(rs.format_table([(stdlib, prefork)], skips))

    problems = rs.compare(stdlib, prefork, skips)
    if problems:
        message = [f"test.{suite} does not conform:", *(f"  - {p}" for p in problems)]
        for outcome in (stdlib, prefork):
            result = outcome.result or {}
            if outcome is prefork or result.get("ok") is not True:
                message += [
                    f"--- {outcome.impl}: last {TAIL_LINES} lines of {outcome.log_path} ---",
                    outcome.tail(TAIL_LINES),
                ]
        pytest.fail("\n".join(message), pytrace=False)


@pytest.mark.timeout(60)
def test_public_names_cover_stdlib(tmp_path: Path) -> None:
    """prefork exports every name of socketserver.__all__ (replaces the skipped test_all)."""
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(rs.REPO_ROOT)!r})
        import prefork, socketserver
        missing = [n for n in socketserver.__all__
                   if n not in prefork.__all__ or not hasattr(prefork, n)]
        print(missing)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=rs.child_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"missing from prefork: {proc.stdout}"
