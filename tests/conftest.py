"""Suite-wide guard: every test must leave no child processes, threads or fds behind."""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

SETTLE = 10.0
"""Seconds a test's leftovers get to finish on their own before it is failed."""


def _new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    """Live threads that did not exist when the test started."""
    return [t for t in threading.enumerate() if t not in before and t.is_alive()]


def _children(proc: psutil.Process) -> list[psutil.Process]:
    """All descendants of ``proc``, zombies included."""
    with contextlib.suppress(psutil.Error):
        return proc.children(recursive=True)
    return []


def _describe(children: list[psutil.Process]) -> list[str]:
    """Pid, status and command line of each child, for the failure message."""
    described = []
    for child in children:
        parts = [str(child.pid)]
        for attr in ("status", "cmdline"):
            with contextlib.suppress(psutil.Error):
                parts.append(repr(getattr(child, attr)()))
        described.append(" ".join(parts))
    return described


def _kill_and_reap(children: list[psutil.Process]) -> None:
    """Clean up leaked children so one failure does not cascade into later tests."""
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    for child in children:
        with contextlib.suppress(psutil.Error, ChildProcessError, OSError):
            child.wait(timeout=5)


def _settle(predicate: Callable[[], object], timeout: float = SETTLE) -> bool:
    """Poll ``predicate`` until it is true (``True``) or ``timeout`` passes (``False``)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def _fd_table() -> dict[int, str]:
    """This process's open fds and what each points at, for the failure message."""
    table = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            table[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return table


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves children, threads or file descriptors behind."""
    proc = psutil.Process()
    children_before = {c.pid for c in _children(proc)}
    threads_before = set(threading.enumerate())
    fds_before = proc.num_fds()
    table_before = _fd_table()

    yield

    problems = []

    def leaked_children() -> list[psutil.Process]:
        return [c for c in _children(proc) if c.pid not in children_before]

    if not _settle(lambda: not leaked_children()):
        leftovers = leaked_children()
        problems.append(f"child processes left behind: {_describe(leftovers)}")
        _kill_and_reap(leftovers)

    if not _settle(lambda: not _new_threads(threads_before)):
        names = [t.name for t in _new_threads(threads_before)]
        problems.append(f"threads left running: {names}")

    def fds_settled() -> bool:
        if proc.num_fds() <= fds_before:
            return True
        gc.collect()
        return proc.num_fds() <= fds_before

    if not _settle(fds_settled, timeout=5.0):
        after = _fd_table()
        extra = {fd: target for fd, target in after.items() if table_before.get(fd) != target}
        problems.append(
            f"file descriptors leaked: {fds_before} before, {proc.num_fds()} after; new: {extra}"
        )

    assert not problems, "; ".join(problems)
