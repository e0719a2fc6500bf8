#!/usr/bin/env python3
"""Run CPython's own server test suites against prefork (or the stdlib).

Bootstrap: with ``--impl prefork`` this script does ``import prefork`` and
``sys.modules['socketserver'] = prefork`` *before* ``http.server``,
``xmlrpc.server``, ``wsgiref`` and the test module are imported, so the
stdlib servers are rebuilt on prefork's classes (checked on the MROs).

Usage::

    python tests/conformance/run_suite.py --impl prefork test_httpservers
    python tests/conformance/run_suite.py --impl stdlib test_xmlrpc -k MultiPath
    python tests/conformance/run_suite.py --report      # all suites, both impls

A suite run writes unittest output to stderr and prints, as the last line of
stdout, one JSON object with the counts.  Exit status: 0 all passed, 1 some
failure/error (or stale skip-list entry), 2 bootstrap failed.

The parent-side helpers (``SuiteProcess``, ``compare``, ``format_table``) are
shared with ``test_conformance.py``.  This module must not import
``socketserver`` or any server module at import time.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import unittest
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
RUNNER = Path(__file__).resolve()

SUITES: tuple[str, ...] = (
    "test_socketserver",
    "test_httpservers",
    "test_xmlrpc",
    "test_docxmlrpc",
    "test_wsgiref",
)
IMPLS: tuple[str, ...] = ("stdlib", "prefork")

# Wall time of each suite on the stdlib, measured with CPython 3.11.7 on a
# 2-core box: socketserver 0.5s, httpservers 1.2s, xmlrpc 27s (9 x 3s
# 'walltime' tests in MultiPathServerTestCase), docxmlrpc 3.6s, wsgiref 0.1s.
# Timeouts below are the hard limit for one subprocess (generous: a hang in
# prefork must surface as a failure with a traceback dump, not a stuck run).
SUITE_TIMEOUTS: dict[str, float] = {
    "test_socketserver": 120.0,
    "test_httpservers": 120.0,
    "test_xmlrpc": 180.0,
    "test_docxmlrpc": 120.0,
    "test_wsgiref": 120.0,
}

# Modules that must be built on the substituted socketserver.
SERVER_MODULES: tuple[str, ...] = (
    "socketserver",
    "http.server",
    "xmlrpc.server",
    "wsgiref.simple_server",
)
LISTED_SKIP_PREFIX = "conformance skip list: "
_PROXY_VARS = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy"})


def load_skips() -> dict[str, str]:
    """Return the skip list from ``skips.py`` (loaded by path)."""
    spec = importlib.util.spec_from_file_location("_conformance_skips", HERE / "skips.py")
    if spec is None or spec.loader is None:
        raise ImportError("cannot load skips.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.SKIPS)


def normalize_suite(name: str) -> str:
    """Map ``test.test_x`` / ``test_x`` to ``test_x``; reject unknown suites."""
    short = name.removeprefix("test.")
    if short not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")
    return short


# --------------------------------------------------------------------------
# Child side: bootstrap and run one suite.
# --------------------------------------------------------------------------


def bootstrap(impl: str) -> type:
    """Make ``socketserver`` resolve to *impl*; return the TCPServer in use.

    Raises if a server module was imported too early or if the stdlib servers
    are not built on the chosen implementation.
    """
    early = [m for m in SERVER_MODULES if m in sys.modules]
    if early:
        raise RuntimeError(f"imported before the bootstrap: {early}")
    target: ModuleType
    if impl == "prefork":
        sys.path.insert(0, str(REPO_ROOT))
        target = importlib.import_module("prefork")
        late = [m for m in SERVER_MODULES[1:] if m in sys.modules]
        if late:
            raise RuntimeError(
                f"'import prefork' already imported {late}; they are bound to the "
                "stdlib socketserver and cannot be rebuilt on prefork"
            )
        sys.modules["socketserver"] = target
        tcp_server: type = target.TCPServer
        if tcp_server.__module__.partition(".")[0] != "prefork":
            raise AssertionError(
                f"prefork.TCPServer is defined in {tcp_server.__module__!r}, not in prefork"
            )
    elif impl == "stdlib":
        target = importlib.import_module("socketserver")
        tcp_server = target.TCPServer
    else:
        raise ValueError(f"unknown impl {impl!r}")

    http_server = importlib.import_module("http.server")
    xmlrpc_server = importlib.import_module("xmlrpc.server")
    wsgi_server = importlib.import_module("wsgiref.simple_server")
    for cls in (
        http_server.HTTPServer,
        xmlrpc_server.SimpleXMLRPCServer,
        wsgi_server.WSGIServer,
    ):
        mro = cls.__mro__
        if tcp_server not in mro:
            raise AssertionError(f"{cls.__qualname__}.__mro__ lacks {tcp_server!r}: {mro}")
    if http_server.socketserver is not target or xmlrpc_server.socketserver is not target:
        raise AssertionError("http.server/xmlrpc.server did not bind the chosen socketserver")
    return tcp_server


def iter_tests(suite: unittest.TestSuite | unittest.TestCase) -> Iterator[unittest.TestCase]:
    """Yield the test cases of a (nested) suite."""
    if isinstance(suite, unittest.TestSuite):
        for item in suite:
            yield from iter_tests(item)
    else:
        yield suite


def apply_skips(suite: unittest.TestSuite, skips: dict[str, str]) -> list[str]:
    """Turn the listed tests of *suite* into skips; return their ids."""
    applied = []
    for test in iter_tests(suite):
        reason = skips.get(test.id())
        if reason is None:
            continue

        @unittest.skip(LISTED_SKIP_PREFIX + reason)
        def skipped() -> None:
            """Placeholder for a test on the conformance skip list."""

        # Instance attribute: the same function may back other test ids.
        setattr(test, test._testMethodName, skipped)
        applied.append(test.id())
    return applied


class ConformanceResult(unittest.TextTestResult):
    """TextTestResult that also records passes, skip origin and durations."""

    listed: frozenset[str] = frozenset()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Initialise like TextTestResult."""
        super().__init__(*args, **kwargs)
        self.passed_ids: list[str] = []
        self.suite_skips: list[str] = []
        self.listed_skips: list[str] = []
        self.timings: list[tuple[float, str]] = []
        self._started: float = 0.0

    def startTest(self, test: unittest.TestCase) -> None:  # noqa: N802 (unittest API)
        """Record the start time."""
        self._started = time.monotonic()
        super().startTest(test)

    def stopTest(self, test: unittest.TestCase) -> None:  # noqa: N802 (unittest API)
        """Record the duration."""
        super().stopTest(test)
        self.timings.append((time.monotonic() - self._started, test.id()))

    def addSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802 (unittest API)
        """Record a passing test id."""
        super().addSuccess(test)
        self.passed_ids.append(test.id())

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:  # noqa: N802 (unittest API)
        """Split skips into suite-own and skip-list ones."""
        super().addSkip(test, reason)
        bucket = self.listed_skips if test.id() in self.listed else self.suite_skips
        bucket.append(test.id())


class _Runner(unittest.TextTestRunner):
    """TextTestRunner producing a ConformanceResult with the listed ids."""

    resultclass = ConformanceResult

    def __init__(self, listed: Sequence[str], **kwargs: Any) -> None:
        """Store the ids of skip-listed tests."""
        super().__init__(**kwargs)
        self.listed = frozenset(listed)

    def _makeResult(self) -> unittest.TextTestResult:  # noqa: N802 (unittest API)
        """Build the result and tell it which ids are skip-listed."""
        result = super()._makeResult()
        assert isinstance(result, ConformanceResult)
        result.listed = self.listed
        return result


def _test_support_altered() -> bool:
    """Return test.support's 'environment altered' flag (leaked threads etc.)."""
    support = sys.modules.get("test.support")
    return bool(getattr(support, "environment_altered", False))


def run_one(
    suite_name: str, impl: str, patterns: Sequence[str], verbosity: int, stream: TextIO
) -> dict[str, Any]:
    """Bootstrap *impl*, run *suite_name* and return the summary dict."""
    summary: dict[str, Any] = {
        "suite": suite_name,
        "impl": impl,
        "python": platform.python_version(),
    }
    started = time.monotonic()
    try:
        tcp_server = bootstrap(impl)
        module = importlib.import_module(f"test.{suite_name}")
        bound = getattr(module, "socketserver", None)
        if bound is not None and bound is not sys.modules["socketserver"]:
            raise AssertionError(f"test.{suite_name}.socketserver is {bound!r}")
    except Exception:
        summary["bootstrap_error"] = traceback.format_exc()
        print(summary["bootstrap_error"], file=stream)
        summary["ok"] = False
        return summary
    summary["tcp_server"] = f"{tcp_server.__module__}.{tcp_server.__qualname__}"

    loader = unittest.TestLoader()
    if patterns:
        loader.testNamePatterns = [p if "*" in p else f"*{p}*" for p in patterns]
    suite = loader.loadTestsFromModule(module)
    prefix = f"test.{suite_name}."
    skips = {k: v for k, v in load_skips().items() if k.startswith(prefix)}
    all_ids = {t.id() for t in iter_tests(suite)}
    unknown = sorted(k for k in skips if k not in all_ids) if not patterns else []
    listed = apply_skips(suite, skips) if impl == "prefork" else []

    runner = _Runner(listed, stream=stream, verbosity=verbosity)
    result = runner.run(suite)
    assert isinstance(result, ConformanceResult)

    failed = [t.id() for t, _ in (*result.failures, *result.errors)]
    failed += [t.id() for t in result.unexpectedSuccesses]
    result.timings.sort(reverse=True)
    summary.update(
        ran=result.testsRun,
        passed=len(result.passed_ids),
        failures=len(result.failures),
        errors=len(result.errors),
        skipped=len(result.skipped),
        skipped_suite=len(result.suite_skips),
        skipped_listed=len(result.listed_skips),
        expected_failures=len(result.expectedFailures),
        unexpected_successes=len(result.unexpectedSuccesses),
        failed_ids=sorted(set(failed)),
        unknown_skips=unknown,
        environment_altered=_test_support_altered(),
        duration=round(time.monotonic() - started, 3),
        slowest=[[tid, round(sec, 3)] for sec, tid in result.timings[:5]],
        listed_skip_ids=sorted(result.listed_skips),
        passed_ids=sorted(result.passed_ids),
    )
    summary["ok"] = result.wasSuccessful() and not (unknown and impl == "prefork")
    return summary


def child_main(args: argparse.Namespace) -> int:
    """Run one suite in this process; print the JSON summary last."""
    if args.hang_timeout:
        import faulthandler

        # Dump every thread's stack and exit if the suite hangs.
        faulthandler.dump_traceback_later(args.hang_timeout, exit=True)
    summary = run_one(
        normalize_suite(args.suite), args.impl, args.k or (), args.verbosity, sys.stderr
    )
    if summary.get("unknown_skips"):
        print(
            f"stale skip-list entries (no such test): {summary['unknown_skips']}", file=sys.stderr
        )
    sys.stderr.flush()
    line = json.dumps(summary, sort_keys=True)
    if args.json_out:
        Path(args.json_out).write_text(line + "\n", encoding="utf-8")
    print(line, flush=True)
    if "bootstrap_error" in summary:
        return 2
    return 0 if summary["ok"] else 1


# --------------------------------------------------------------------------
# Parent side: run suites in isolated, killable subprocesses and compare.
# --------------------------------------------------------------------------


def child_env(tmpdir: Path) -> dict[str, str]:
    """Environment for a suite subprocess: no PYTHON*/proxy leaks, private TMPDIR."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PYTHON") and k.lower() not in _PROXY_VARS
    }
    env.update(
        TMPDIR=str(tmpdir),
        TEMP=str(tmpdir),
        TMP=str(tmpdir),
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONUNBUFFERED="1",
        PYTHONIOENCODING="utf-8",
        PYTHONFAULTHANDLER="1",
    )
    return env


@dataclass
class Outcome:
    """What one suite subprocess produced."""

    suite: str
    impl: str
    returncode: int | None
    timed_out: bool
    wall: float
    log_path: Path
    result: dict[str, Any] | None
    leftovers: list[str] = field(default_factory=list)

    def tail(self, lines: int = 60) -> str:
        """Return the last *lines* lines of the output, minus the JSON summary."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"<no output: {exc}>"
        kept = [line for line in text.splitlines() if not line.startswith('{"')]
        return "\n".join(kept[-lines:])

    def counts(self, key: str) -> int | None:
        """Return one count from the JSON summary (None if there is none)."""
        return None if self.result is None else self.result.get(key)


class SuiteProcess:
    """One ``run_suite.py --impl IMPL SUITE`` subprocess in its own session.

    The whole process group (and any descendant seen while polling) is killed
    on timeout, on ``kill()`` and after exit, so no orphan is left behind.
    """

    def __init__(
        self, suite: str, impl: str, workdir: Path, timeout: float, extra_args: Sequence[str] = ()
    ) -> None:
        """Prepare (but do not start) the run; *workdir* becomes its cwd."""
        self.suite = normalize_suite(suite)
        self.impl = impl
        self.workdir = workdir
        self.timeout = timeout
        self.extra_args = list(extra_args)
        self.log_path = workdir / "output.log"
        self.json_path = workdir / "result.json"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._tmpdir: Path | None = None
        self._started = 0.0
        self._descendants: dict[int, float] = {}
        self._timed_out = False
        self._outcome: Outcome | None = None

    def start(self) -> None:
        """Launch the subprocess."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        tmpdir = self.workdir / "tmp"
        if len(str(tmpdir)) > 60:  # AF_UNIX paths (TMPDIR/unix_socket.xxx) max 107 bytes
            tmpdir = Path(tempfile.mkdtemp(prefix="pfc-"))
            self._tmpdir = tmpdir
        tmpdir.mkdir(exist_ok=True)
        cmd = [
            sys.executable,
            str(RUNNER),
            "--impl",
            self.impl,
            "--json-out",
            str(self.json_path),
            "--hang-timeout",
            str(max(self.timeout - 15, 5)),
            *self.extra_args,
            self.suite,
        ]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in _finish)
        self._started = time.monotonic()
        self._proc = subprocess.Popen(
            cmd,
            cwd=self.workdir,
            env=child_env(tmpdir),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _track_descendants(self) -> None:
        """Remember descendants (even ones that leave the process group)."""
        try:
            import psutil
        except ImportError:
            return
        assert self._proc is not None
        try:
            for child in psutil.Process(self._proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    self._descendants.setdefault(child.pid, child.create_time())
        except psutil.Error:
            pass

    def poll(self) -> bool:
        """Return True once finished (killing it if past its deadline)."""
        if self._outcome is not None:
            return True
        assert self._proc is not None, "start() first"
        if not self._exited():
            if time.monotonic() - self._started < self.timeout:
                self._track_descendants()
                return False
            self._timed_out = True
            self.kill()
            return True
        self._finish()
        return True

    def _exited(self) -> bool:
        """Return True if the child exited, without reaping it.

        While it is an unreaped zombie its pid cannot be reused, so killing
        its process group afterwards cannot hit an unrelated group.
        """
        assert self._proc is not None
        if self._proc.returncode is not None:
            return True
        if not hasattr(os, "waitid"):
            return self._proc.poll() is not None
        try:
            flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
            return os.waitid(os.P_PID, self._proc.pid, flags) is not None
        except ChildProcessError:
            return self._proc.poll() is not None

    def wait(self) -> Outcome:
        """Block until finished or timed out; return the outcome."""
        while not self.poll():
            time.sleep(0.2)
        assert self._outcome is not None
        return self._outcome

    def kill(self) -> None:
        """SIGKILL the process group and every tracked descendant."""
        if self._proc is None or self._outcome is not None:
            return
        _kill_group(self._proc.pid)
        self._kill_descendants()
        if hasattr(os, "waitid") and self._proc.returncode is None:
            with contextlib.suppress(ChildProcessError):
                os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOWAIT)
        self._finish()

    def _kill_descendants(self) -> list[str]:
        """Kill tracked descendants still alive; describe them."""
        found = []
        try:
            import psutil
        except ImportError:
            return found
        for pid, created in self._descendants.items():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(f"{pid}: {' '.join(proc.cmdline())}")
                    proc.kill()
        return found

    def _close(self) -> None:
        """Close the log file and remove a private TMPDIR."""
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def _finish(self) -> None:
        """Reap, kill leftovers, read the JSON summary."""
        assert self._proc is not None
        wall = time.monotonic() - self._started
        # Kill leftovers before reaping: the zombie pins the group id.
        leftovers = _kill_group(self._proc.pid) + self._kill_descendants()
        self._proc.wait()
        self._close()
        result = None
        with contextlib.suppress(OSError, ValueError):
            result = json.loads(self.json_path.read_text(encoding="utf-8"))
        self._outcome = Outcome(
            self.suite,
            self.impl,
            self._proc.returncode,
            self._timed_out,
            round(wall, 2),
            self.log_path,
            result,
            sorted(set(leftovers)),
        )


def _kill_group(pgid: int) -> list[str]:
    """SIGKILL every process in group *pgid*; describe those found alive."""
    found = []
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        for proc in psutil.process_iter(["pid", "cmdline", "status"]):
            with contextlib.suppress(OSError, psutil.Error):
                if os.getpgid(proc.pid) == pgid and proc.info["status"] != "zombie":
                    found.append(f"{proc.pid}: {' '.join(proc.info['cmdline'] or [])}")
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    return found


def run_pair(suite: str, workdir: Path, timeout: float | None = None) -> tuple[Outcome, Outcome]:
    """Run *suite* under stdlib and prefork concurrently; return both outcomes."""
    limit = timeout or SUITE_TIMEOUTS[normalize_suite(suite)]
    runs = [SuiteProcess(suite, impl, workdir / impl, limit) for impl in IMPLS]
    with contextlib.ExitStack() as stack:
        for run in runs:
            stack.callback(run.kill)
            run.start()
        stdlib, prefork = (run.wait() for run in runs)
    return stdlib, prefork


def _describe_failure(out: Outcome) -> str | None:
    """Explain why a run produced no usable summary, or None if it did."""
    if out.timed_out:
        return f"{out.impl}: timed out after {out.wall:.0f}s (killed)"
    if out.result is None:
        if "Timeout (0:" in out.tail(10**6):
            return f"{out.impl}: hung; faulthandler dumped all stacks and exited (see output)"
        return f"{out.impl}: crashed, no JSON summary (exit status {out.returncode})"
    if "bootstrap_error" in out.result:
        last = out.result["bootstrap_error"].strip().splitlines()[-1]
        return f"{out.impl}: bootstrap failed: {last}"
    return None


def compare(stdlib: Outcome, prefork: Outcome, skips: dict[str, str]) -> list[str]:
    """Return the conformance problems of *prefork* against the *stdlib* baseline."""
    problems = [p for p in map(_describe_failure, (stdlib, prefork)) if p]
    if problems:
        return problems
    base, cand = stdlib.result, prefork.result
    assert base is not None and cand is not None
    if base["failed_ids"]:
        problems.append(f"stdlib baseline itself fails here: {base['failed_ids']}")
    if cand["failed_ids"]:
        problems.append(
            f"prefork failures={cand['failures']} errors={cand['errors']} "
            f"unexpected_successes={cand['unexpected_successes']}: {cand['failed_ids']}"
        )
    cand_passed = set(cand["passed_ids"])
    lost = sorted(
        t
        for t in base["passed_ids"]
        if t not in cand_passed and t not in skips and t not in cand["failed_ids"]
    )
    if lost:
        problems.append(f"passed on stdlib, neither passed nor failed on prefork: {lost}")
    listed = len(cand["listed_skip_ids"])
    in_suite = sum(1 for t in skips if t.startswith(f"test.{prefork.suite}."))
    in_suite -= len(cand["unknown_skips"])
    if cand["ran"] - listed != base["ran"] - in_suite:
        problems.append(
            f"ran counts differ: stdlib {base['ran']} - {in_suite} listed vs "
            f"prefork {cand['ran']} - {listed} skipped by the list"
        )
    if cand["unknown_skips"]:
        problems.append(f"stale skip-list entries: {cand['unknown_skips']}")
    if cand["environment_altered"] and not base["environment_altered"]:
        warnings = [line for line in prefork.tail(10**6).splitlines() if "Warning -- " in line]
        problems.append(
            "test.support reported the environment altered (leaked threads, child "
            f"processes or files) on prefork only: {warnings[:10]}"
        )
    if prefork.leftovers and not stdlib.leftovers:
        problems.append(f"prefork left processes behind (killed): {prefork.leftovers}")
    return problems


def _cell(out: Outcome, keys: Sequence[str]) -> str:
    """Format 'ran/passed/...' for one outcome."""
    if out.result is None or "ran" not in out.result:
        return "TIMEOUT" if out.timed_out else "ERROR"
    return "/".join(str(out.result[k]) for k in keys)


def format_table(rows: Sequence[tuple[Outcome, Outcome]], skips: dict[str, str]) -> str:
    """Return a text table comparing stdlib and prefork counts per suite."""
    header = (
        "suite",
        "stdlib ran/pass/skip",
        "prefork ran/pass/skip/listed",
        "stdlib s",
        "prefork s",
        "status",
    )
    lines = [header]
    for stdlib, prefork in rows:
        status = "OK" if not compare(stdlib, prefork, skips) else "FAIL"
        lines.append(
            (
                stdlib.suite,
                _cell(stdlib, ("ran", "passed", "skipped")),
                _cell(prefork, ("ran", "passed", "skipped_suite", "skipped_listed")),
                f"{stdlib.wall:.1f}",
                f"{prefork.wall:.1f}",
                status,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def report_main(args: argparse.Namespace) -> int:
    """Run all suites under both impls (``--jobs`` at a time) and print a table."""
    skips = load_skips()
    keep = Path(args.workdir) if args.workdir else None
    base = keep or Path(tempfile.mkdtemp(prefix="prefork-conformance-"))
    pending = [SuiteProcess(s, i, base / s / i, SUITE_TIMEOUTS[s]) for s in SUITES for i in IMPLS]
    runs = list(pending)
    active: list[SuiteProcess] = []
    try:
        while pending or active:
            while pending and len(active) < args.jobs:
                active.append(pending.pop(0))
                active[-1].start()
            active = [run for run in active if not run.poll()]
            time.sleep(0.2)
        outcomes = {(r.suite, r.impl): r.wait() for r in runs}
        rows = [(outcomes[s, "stdlib"], outcomes[s, "prefork"]) for s in SUITES]
        print(format_table(rows, skips))
        status = 0
        for stdlib, prefork in rows:
            problems = compare(stdlib, prefork, skips)
            if problems:
                status = 1
                print(f"\n{stdlib.suite}:")
                for problem in problems:
                    print(f"  - {problem}")
                if args.verbose:
                    print(prefork.tail(args.verbose))
        if keep:
            print(f"\nlogs: {keep}")
        return status
    finally:
        for run in runs:
            run.kill()
        if keep is None:
            shutil.rmtree(base, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", nargs="?", help=f"one of {', '.join(SUITES)}")
    parser.add_argument("--impl", choices=IMPLS, default="prefork")
    parser.add_argument(
        "--report", action="store_true", help="run all suites for both impls and print a table"
    )
    parser.add_argument(
        "-k", action="append", help="only run tests matching this pattern (unittest -k)"
    )
    parser.add_argument("--json-out", help="also write the JSON summary to this file")
    parser.add_argument(
        "--hang-timeout",
        type=float,
        default=0.0,
        help="dump all stacks and exit after this many seconds",
    )
    parser.add_argument("--verbosity", type=int, default=2)
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 2, help="--report: concurrent subprocesses"
    )
    parser.add_argument("--workdir", help="--report: keep logs in this directory")
    parser.add_argument(
        "--verbose",
        type=int,
        default=0,
        metavar="LINES",
        help="--report: print this many output lines of failing prefork runs",
    )
    args = parser.parse_args(argv)
    if args.report:
        return report_main(args)
    if not args.suite:
        parser.error("a suite is required (or --report)")
    return child_main(args)


if __name__ == "__main__":
    sys.exit(main())
