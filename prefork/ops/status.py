"""``prefork status``: what a running master's workers are doing.

It reads the scoreboard a master publishes (a server with ``publish_scoreboard =
True`` maps it in ``/dev/shm/prefork-<masterpid>.scoreboard``) and adds what the
kernel knows of each worker (age, memory, CPU) through psutil::

    prefork status --pid /run/app.pid            # a header and a table
    prefork status --master 812 --json           # one JSON object
    prefork status --pid /run/app.pid --watch 1  # refresh every second until Ctrl-C
    prefork status --pid /run/app.pid --stacks   # each worker logs its threads' stacks

Reading the scoreboard is a read of shared memory: it works however busy or
stuck the workers are.  Problems (no pidfile, master not running, no published
scoreboard) are one line on stderr, ``prefork status: <reason>``, and exit
status 1.

The work is split so that the pieces can be tested alone: :func:`find_master`
and :func:`open_scoreboard` locate the data, :class:`ProcessSampler` measures
the processes, :func:`collect` joins both into :class:`WorkerRow` objects, and
:func:`format_status` and :func:`to_json` present them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psutil

from prefork.engine.scoreboard import Scoreboard, SlotView, WorkerState, published_path
from prefork.engine.worker import STACKS_SIGNAL
from prefork.errors import ConfigError
from prefork.ops.pidfile import read as read_pidfile

__all__ = [
    "ProcessSampler",
    "ProcessStats",
    "Status",
    "WorkerRow",
    "collect",
    "find_master",
    "format_status",
    "main",
    "open_scoreboard",
    "send_stacks",
    "to_json",
    "totals",
]

#: Seconds over which CPU use is measured (all workers at once).
CPU_INTERVAL = 0.2
#: Default refresh period of ``--watch``.
WATCH_INTERVAL = 2.0
#: Seconds between two workers' ``--stacks`` signals, so their dumps do not interleave.
STACKS_STAGGER = 0.1
#: Clears a terminal and puts the cursor top left.
CLEAR_SCREEN = "\x1b[H\x1b[2J"
#: Slack when comparing the scoreboard file's time with the master's start:
#: psutil derives start times from the boot time, which Linux gives in whole seconds.
_START_TIME_SLACK = 2.0

_PROG = "prefork status"


# -- the data ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessStats:
    """What the kernel says of one process; ``None`` where it could not be read."""

    started: float | None  # time.time() of the process's start
    rss: int | None  # resident memory, bytes
    uss: int | None  # memory only this process holds, bytes (needs the right to read smaps)
    cpu_percent: float | None  # over the sampling interval; may exceed 100 with threads


@dataclass(frozen=True)
class WorkerRow:
    """One worker as ``prefork status`` shows it."""

    pid: int
    index: int
    generation: int
    state: str
    age: float | None  # seconds since the process started
    requests: int
    busy: int
    idle: int
    threads: int
    rss: int | None
    uss: int | None
    cpu_percent: float | None


@dataclass(frozen=True)
class Status:
    """A master and its workers at one moment."""

    master_pid: int
    uptime: float | None
    workers: list[WorkerRow]


def collect(
    slots: Sequence[SlotView], stats: Mapping[int, ProcessStats | None], now: float
) -> list[WorkerRow]:
    """Join scoreboard slots with process statistics (``now`` is a ``time.time()``)."""
    rows = []
    for slot in sorted(slots, key=lambda slot: slot.index):
        proc = stats.get(slot.pid)
        started = proc.started if proc is not None else None
        rows.append(
            WorkerRow(
                pid=slot.pid,
                index=slot.index,
                generation=slot.generation,
                state=slot.state.name.lower(),
                age=max(0.0, now - started) if started is not None else None,
                requests=slot.requests,
                busy=slot.busy,
                idle=max(0, slot.threads - slot.busy),
                threads=slot.threads,
                rss=proc.rss if proc is not None else None,
                uss=proc.uss if proc is not None else None,
                cpu_percent=proc.cpu_percent if proc is not None else None,
            )
        )
    return rows


def totals(rows: Sequence[WorkerRow]) -> dict[str, Any]:
    """Sums over the workers; a memory or CPU total covers the workers that could be read."""
    states = {state.name.lower(): 0 for state in WorkerState if state is not WorkerState.FREE}
    for row in rows:
        states[row.state] = states.get(row.state, 0) + 1

    def known_sum(values: Iterable[float | None]) -> float | None:
        present = [value for value in values if value is not None]
        return sum(present) if present else None

    cpu = known_sum(row.cpu_percent for row in rows)
    return {
        "workers": len(rows),
        "states": states,
        "requests": sum(row.requests for row in rows),
        "busy": sum(row.busy for row in rows),
        "idle": sum(row.idle for row in rows),
        "threads": sum(row.threads for row in rows),
        "rss": known_sum(row.rss for row in rows),
        "uss": known_sum(row.uss for row in rows),
        "cpu_percent": round(cpu, 1) if cpu is not None else None,
    }


def to_json(status: Status) -> dict[str, Any]:
    """The ``--json`` object: ``{"master": ..., "workers": [...], "totals": ...}``."""
    workers = []
    for row in status.workers:
        item = asdict(row)
        if row.age is not None:
            item["age"] = round(row.age, 3)
        if row.cpu_percent is not None:
            item["cpu_percent"] = round(row.cpu_percent, 1)
        workers.append(item)
    uptime = round(status.uptime, 3) if status.uptime is not None else None
    return {
        "master": {"pid": status.master_pid, "uptime": uptime},
        "workers": workers,
        "totals": totals(status.workers),
    }


# -- presenting -------------------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    """``42s``, ``3m07s``, ``2h05m``, ``3d04h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def format_bytes(size: int | float | None) -> str:
    """``512B``, ``21.4M``, ``1.2G`` (binary units); ``-`` when unknown."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


_COLUMNS = ("PID", "IDX", "GEN", "STATE", "AGE", "REQUESTS", "BUSY", "IDLE", "RSS", "USS", "CPU%")
_LEFT_ALIGNED = {"STATE"}


def format_header(status: Status) -> str:
    """One line: the master, its uptime, its workers by state and their threads."""
    summary = totals(status.workers)
    by_state = ", ".join(f"{count} {state}" for state, count in summary["states"].items() if count)
    workers = f"workers {summary['workers']}" + (f" ({by_state})" if by_state else "")
    return (
        f"master {status.master_pid}  up {format_duration(status.uptime)}  {workers}"
        f"  threads {summary['busy']} busy / {summary['idle']} idle"
        f"  requests {summary['requests']}"
    )


def format_table(rows: Sequence[WorkerRow]) -> str:
    """The workers, one line each, under a line of column names."""
    cells = [list(_COLUMNS)]
    for row in rows:
        cpu = f"{row.cpu_percent:.1f}" if row.cpu_percent is not None else "-"
        cells.append(
            [
                str(row.pid),
                str(row.index),
                str(row.generation),
                row.state,
                format_duration(row.age),
                str(row.requests),
                str(row.busy),
                str(row.idle),
                format_bytes(row.rss),
                format_bytes(row.uss),
                cpu,
            ]
        )
    widths = [max(len(line[column]) for line in cells) for column in range(len(_COLUMNS))]
    lines = []
    for line in cells:
        parts = [
            cell.ljust(width) if name in _LEFT_ALIGNED else cell.rjust(width)
            for name, cell, width in zip(_COLUMNS, line, widths, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def format_status(status: Status) -> str:
    """The header line and the table, ending with a newline."""
    return f"{format_header(status)}\n{format_table(status.workers)}\n"


# -- finding a master -------------------------------------------------------------------------


def find_master(pidfile: str | None = None, pid: int | None = None) -> int:
    """The pid of the running master named by ``pidfile`` or ``pid``.

    Raises :class:`ConfigError` when the pidfile is missing or holds no pid, or
    when no such process runs.
    """
    if pidfile is not None:
        if not os.path.exists(pidfile):
            raise ConfigError(f"no pidfile at {pidfile}")
        pid = read_pidfile(pidfile)
        if pid is None:
            raise ConfigError(f"pidfile {pidfile} holds no pid")
    if pid is None or pid <= 0:
        raise ConfigError("no master given: use --pid PIDFILE or --master PID")
    if not _running(pid):
        stale = f" (stale pidfile {pidfile})" if pidfile is not None else ""
        raise ConfigError(f"master {pid} is not running{stale}")
    return pid


def _running(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _started(pid: int) -> float | None:
    with contextlib.suppress(psutil.Error):
        return float(psutil.Process(pid).create_time())
    return None


def open_scoreboard(master_pid: int) -> Scoreboard:
    """Map the scoreboard ``master_pid`` publishes, read-only.

    Raises :class:`ConfigError` when there is none, when it cannot be read, or
    when it is left over from an earlier process that had the same pid.
    """
    path = published_path(master_pid)
    try:
        board = Scoreboard.attach(path)
    except FileNotFoundError:
        raise ConfigError(
            f"master {master_pid} publishes no scoreboard ({path} is missing;"
            " the server needs publish_scoreboard = True)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read scoreboard {path}: {exc.strerror or exc}") from None
    except ValueError:  # an empty file cannot be mapped
        raise ConfigError(f"scoreboard {path} is empty") from None
    started = _started(master_pid)
    try:
        written = os.stat(path).st_mtime
    except OSError:
        written = None
    if started is not None and written is not None and written < started - _START_TIME_SLACK:
        board.close()
        raise ConfigError(
            f"scoreboard {path} is stale: it is older than process {master_pid},"
            " which is not the master that wrote it"
        )
    return board


def master_children(master_pid: int) -> set[int]:
    """The pids of the master's live children: the only pids a scoreboard may name."""
    try:
        children = psutil.Process(master_pid).children()
    except psutil.Error:
        return set()
    return {child.pid for child in children}


# -- measuring processes ----------------------------------------------------------------------


class ProcessSampler:
    """Measures processes; keeps them between calls so CPU use covers the time in between."""

    def __init__(self) -> None:
        self._processes: dict[int, psutil.Process] = {}

    def measure(
        self, pids: Iterable[int], interval: float = CPU_INTERVAL
    ) -> dict[int, ProcessStats | None]:
        """Statistics of each pid (``None`` for a process that is gone).

        CPU use of a pid seen for the first time is measured over ``interval``
        seconds, all new pids at once; of a pid seen before, since the last call.
        """
        wanted = {pid for pid in pids if pid > 0}
        for pid in set(self._processes) - wanted:
            del self._processes[pid]
        primed = False
        for pid in wanted - set(self._processes):
            try:
                process = psutil.Process(pid)
                process.cpu_percent(None)  # starts the measurement
            except psutil.Error:
                continue
            self._processes[pid] = process
            primed = True
        if primed and interval > 0:
            time.sleep(interval)  # the measurement interval itself
        stats = {pid: self._stats(self._processes.get(pid)) for pid in wanted}
        for pid, found in stats.items():
            if found is None:  # gone (or its pid reused): start afresh if it shows up again
                self._processes.pop(pid, None)
        return stats

    @staticmethod
    def _stats(process: psutil.Process | None) -> ProcessStats | None:
        if process is None:
            return None
        try:
            with process.oneshot():
                started = process.create_time()
                cpu = process.cpu_percent(None)
                try:
                    memory = process.memory_full_info()
                    rss, uss = memory.rss, memory.uss
                except psutil.AccessDenied:
                    rss, uss = process.memory_info().rss, None
        except psutil.AccessDenied:
            return ProcessStats(None, None, None, None)
        except psutil.Error:
            return None
        return ProcessStats(float(started), int(rss), uss, float(cpu))


def snapshot(
    master_pid: int, board: Scoreboard, sampler: ProcessSampler, *, interval: float = CPU_INTERVAL
) -> Status:
    """The master's state now: its scoreboard, and statistics of the workers it has."""
    slots = board.snapshot()
    children = master_children(master_pid)
    # Only the master's children are measured: a slot's pid may be a moment old.
    stats = sampler.measure((slot.pid for slot in slots if slot.pid in children), interval)
    now = time.time()
    started = _started(master_pid)
    uptime = max(0.0, now - started) if started is not None else None
    return Status(master_pid, uptime, collect(slots, stats, now))


# -- stacks -----------------------------------------------------------------------------------


def send_stacks(
    master_pid: int, slots: Sequence[SlotView], *, stagger: float = STACKS_STAGGER
) -> tuple[list[int], list[int]]:
    """Send ``SIGUSR2`` to every worker that handles it; returns (signalled, skipped) pids.

    Each worker then writes every thread's stack to its stderr and goes on.
    Workers usually share one stderr, so they are signalled ``stagger`` seconds
    apart: dumps written at the same moment would interleave line by line.  A
    pid is signalled only while it is a child of the master, and only once it
    handles the signal: its default action kills, and a worker installs its
    handler in its first moments.
    """
    signalled: list[int] = []
    skipped: list[int] = []
    for slot in sorted(slots, key=lambda slot: slot.index):
        if slot.pid <= 0:
            continue
        if signalled and stagger > 0:
            time.sleep(stagger)  # let the previous worker finish writing its dump
        if _send_stacks_signal(master_pid, slot):
            signalled.append(slot.pid)
        else:
            skipped.append(slot.pid)
    return signalled, skipped


def _send_stacks_signal(master_pid: int, slot: SlotView) -> bool:
    try:
        pidfd = os.pidfd_open(slot.pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):  # no pidfds: a plain kill, after the same checks
        pidfd = -1
    try:
        # With a pidfd held, the pid cannot be reused: these checks stay true.
        if not _is_child(slot.pid, master_pid):
            return False
        catches = _catches_signal(slot.pid, STACKS_SIGNAL)
        if catches is False or (catches is None and slot.state == WorkerState.BOOTING):
            return False
        try:
            if pidfd >= 0:
                signal.pidfd_send_signal(pidfd, STACKS_SIGNAL)
            else:
                os.kill(slot.pid, STACKS_SIGNAL)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def _is_child(pid: int, parent: int) -> bool:
    try:
        return bool(psutil.Process(pid).ppid() == parent)
    except psutil.Error:
        return False


def _catches_signal(pid: int, signum: int) -> bool | None:
    """Whether ``pid`` has a handler for ``signum`` (``SigCgt`` in /proc), or ``None``."""
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


# -- the command ------------------------------------------------------------------------------


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value


def _master_pid(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"not a pid: {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The options of ``prefork status``."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Show what a running prefork master's workers are doing.",
        epilog="The master's server must publish its scoreboard (publish_scoreboard = True).",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("-p", "--pid", metavar="PIDFILE", help="read the master's pid from here")
    which.add_argument("--master", metavar="PID", type=_master_pid, help="the master's pid")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--watch",
        metavar="SECONDS",
        nargs="?",
        const=WATCH_INTERVAL,
        type=_positive_seconds,
        help=f"refresh every SECONDS (default {WATCH_INTERVAL:g}) until Ctrl-C",
    )
    parser.add_argument(
        "--stacks",
        action="store_true",
        help="make every worker write its threads' stacks to its stderr (the server's log)",
    )
    return parser


def main(argv: list[str]) -> int:
    """Run ``prefork status`` with ``argv`` (the arguments after ``status``); return its status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error (already printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        master_pid = find_master(args.pid, args.master)
        board = open_scoreboard(master_pid)
        try:
            if args.stacks:
                return _stacks(master_pid, board, as_json=args.json)
            if args.watch is not None:
                return _watch(master_pid, board, args.watch, args.json)
            _show(snapshot(master_pid, board, ProcessSampler()), as_json=args.json)
            return 0
        finally:
            board.close()
    except ConfigError as exc:
        print(f"{_PROG}: {exc}", file=sys.stderr)
        return 1


def _show(status: Status, *, as_json: bool, clear: bool = False) -> None:
    if as_json:
        text = json.dumps(to_json(status)) + "\n"
    else:
        text = (CLEAR_SCREEN if clear else "") + format_status(status)
    sys.stdout.write(text)
    sys.stdout.flush()


def _watch(master_pid: int, board: Scoreboard, interval: float, as_json: bool) -> int:
    sampler = ProcessSampler()
    try:
        while True:
            if not _running(master_pid):
                raise ConfigError(f"master {master_pid} is not running any more")
            # --json --watch prints one JSON object a line (JSON Lines), never clears.
            _show(snapshot(master_pid, board, sampler), as_json=as_json, clear=not as_json)
            time.sleep(interval)  # the refresh period
    except KeyboardInterrupt:
        return 0


def _stacks(master_pid: int, board: Scoreboard, *, as_json: bool) -> int:
    signalled, skipped = send_stacks(master_pid, board.snapshot())
    if as_json:
        print(
            json.dumps({"signal": STACKS_SIGNAL.name, "signalled": signalled, "skipped": skipped})
        )
    else:
        if signalled:
            pids = ", ".join(map(str, signalled))
            print(
                f"sent {STACKS_SIGNAL.name} to {len(signalled)} worker(s): {pids};"
                " each writes its threads' stacks to its stderr (the server's log)"
            )
        if skipped:
            pids = ", ".join(map(str, skipped))
            print(f"not signalled (gone, or not handling {STACKS_SIGNAL.name} yet): {pids}")
    if not signalled:
        print(f"{_PROG}: no worker of master {master_pid} could be signalled", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
