"""Fixtures of the fault suite (servers, commands, loads, figures) and its report.

* The ``slow`` marker is registered here; slow tests of this directory are left out
  unless ``-m`` selects them (``-m slow``, ``-m "slow or not slow"``) or
  ``--faults-slow`` is given, so that a plain ``pytest`` runs the shorter default set.
* ``--faults-report FILE`` writes the figures of the tests that ran into ``FILE``
  (``docs/reliability.md``), see :mod:`tests.faults.report`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cli.harness import CommandProcess
from engine.conftest import start_load  # noqa: F401 - the engine tests' fixture, shared

from . import report as faults_report
from .helpers import FaultServer, Figures

HERE = Path(__file__).resolve().parent


# -- options, marker, default set ---------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("faults", "the fault suite (tests/faults)")
    group.addoption(
        "--faults-report",
        metavar="FILE",
        default=None,
        help="write the figures of the fault tests that ran into FILE (docs/reliability.md)",
    )
    group.addoption(
        "--faults-slow",
        action="store_true",
        default=False,
        help="run the slow fault tests too (as -m 'slow or not slow' would)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: a long fault test, left out unless -m selects it or --faults-slow"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("markexpr", default="") or config.getoption("faults_slow", default=False):
        return
    named = _named_tests(config)
    selected, deselected = [], []
    for item in items:
        left_out = (
            HERE in Path(item.path).resolve().parents
            and item.get_closest_marker("slow") is not None
            and not any(item.nodeid.startswith(name) for name in named)
        )
        (deselected if left_out else selected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


def _named_tests(config: pytest.Config) -> list[str]:
    """Node ids given on the command line (``path::test``): those always run."""
    named = []
    for arg in config.args:
        path, sep, rest = arg.partition("::")
        if sep:
            with contextlib.suppress(ValueError):
                relative = Path(path).resolve().relative_to(config.rootpath)
                named.append(f"{relative.as_posix()}::{rest}")
    return named


# -- the report ---------------------------------------------------------------------------------

#: ``{nodeid: {"outcome", "duration", "slow", "figures"}}`` of the fault tests run so far
#: (on an xdist controller, from the reports its workers send back).
_RESULTS: dict[str, dict[str, Any]] = {}
_STARTED = time.monotonic()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collect the outcome, duration and figures of each fault test."""
    if "faults/test_" not in report.nodeid.replace(os.sep, "/"):
        return
    entry = _RESULTS.setdefault(
        report.nodeid,
        {"line": 0, "outcome": "passed", "duration": 0.0, "figures": None, "slow": False},
    )
    entry["line"] = report.location[1] or 0
    entry["duration"] += report.duration
    entry["slow"] = entry["slow"] or "slow" in report.keywords
    if report.failed:
        entry["outcome"] = "failed" if report.when == "call" else f"error ({report.when})"
    elif report.skipped and entry["outcome"] == "passed":
        entry["outcome"] = "skipped"
    for name, value in report.user_properties:
        if name == faults_report.PROPERTY:
            entry["figures"] = json.loads(value)


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    path = config.getoption("faults_report", default=None)
    if not path or hasattr(config, "workerinput"):  # an xdist worker: the controller writes
        return
    rows = [
        faults_report.result_row(
            nodeid, e["line"], e["outcome"], e["duration"], e["figures"], e["slow"]
        )
        for nodeid, e in _RESULTS.items()
    ]
    if not rows:
        return
    command = os.environ.get(faults_report.COMMAND_ENV) or "pytest " + " ".join(
        config.invocation_params.args
    )
    generated = faults_report.render(rows, command=command, elapsed=time.monotonic() - _STARTED)
    faults_report.write_report(Path(path), generated)


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    """The test's figures; put in its report (``user_properties``) when it ends."""
    recorded = Figures()
    yield recorded
    request.node.user_properties.append((faults_report.PROPERTY, json.dumps(recorded.as_dict())))


@pytest.fixture
def start_server() -> Iterator[Callable[..., FaultServer]]:
    """``start_server(*app_args, nofile=None)`` starts ``tests/engine/app.py``; all are
    killed and reaped after the test."""
    started: list[FaultServer] = []

    def start(*args: Any, name: str = "server", nofile: int | None = None) -> FaultServer:
        server = FaultServer(*args, name=name, nofile=nofile)
        started.append(server)
        return server.start()

    yield start
    _close_all(started)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """The command's working directory, with ``faultapp.py`` in it."""
    shutil.copy(HERE / "faultapp.py", tmp_path / "faultapp.py")
    return tmp_path


@pytest.fixture
def start_command(app_dir: Path) -> Iterator[Callable[..., CommandProcess]]:
    """``start_command(*args, binds=1)`` runs ``prefork ARGS`` in ``app_dir``; every
    process of its session (new masters of an upgrade too) is killed and reaped after."""
    started: list[CommandProcess] = []

    def start(*args: Any, binds: int = 1, name: str = "prefork") -> CommandProcess:
        command = CommandProcess(*args, cwd=app_dir, name=name)
        started.append(command)
        return command.start(binds=binds)

    yield start
    _close_all(started)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A private directory under /tmp, short enough for Unix socket paths."""
    with tempfile.TemporaryDirectory(prefix="pff-", dir="/tmp") as path:
        yield Path(path)


def _close_all(processes: list[Any]) -> None:
    errors = []
    for process in reversed(processes):
        try:
            process.close()
        except Exception as exc:  # close them all, then report
            errors.append(exc)
    if errors:
        raise errors[0]
