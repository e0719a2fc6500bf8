"""The master: forks the workers, watches them, and acts on signals.

One loop, one place for decisions::

    wait (selector: wakeup pipe, worker notices, worker pidfds; at most one tick)
    -> act on queued signals (a {signal: method} table)
    -> read worker notices (ready, boot failure, recycle request)
    -> reap exited workers
    -> retire stuck workers, kill those past their grace
    -> start or stop workers to match the target

The master never runs application code and never touches a client socket: the
workers accept on the inherited listeners and the kernel balances them.

Generations: every worker carries the generation it was forked for.  ``HUP``
starts a new generation; a worker of an older generation, or one that asked to
be recycled, is *stale*.  Stale workers are stopped gracefully only as fresh
ones report ready, so capacity never dips during a reload.  ``rolling_reload``
(and recycling after ``max_requests``) replaces one worker at a time.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import logging
import os
import selectors
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil

from prefork.core.children import ChildProcesses, ExitedChild, fork_child
from prefork.core.wakeup import Waker
from prefork.engine.listeners import bind_text
from prefork.engine.logfiles import reopen_log_files
from prefork.engine.pool import plan_pool
from prefork.engine.process import Cause, ExitCode, Notice, WorkerProcess, decode_notices
from prefork.engine.proctitle import set_title
from prefork.engine.scoreboard import SHM_DIR, Scoreboard, SlotView, WorkerState, published_path
from prefork.engine.signals import SignalQueue, can_install_handlers, reset_signal_handlers
from prefork.engine.worker import DUMP_SIGNAL, IGNORED_SIGNALS, Worker

logger = logging.getLogger("prefork.master")  # public: docs/operations.md, Logging

#: The signals the master acts on.
MASTER_SIGNALS = (
    signal.SIGHUP,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGWINCH,
    signal.SIGCHLD,
    signal.SIGUSR2,
)


#: Seconds between the stack-dump signal and SIGKILL for a worker past its grace.
_DUMP_GRACE = 0.3
#: Seconds between checks of the workers' memory (``max_worker_memory``).
_MEMORY_CHECK_INTERVAL = 1.0
#: Longest wait between respawns of a worker that keeps failing to boot.
_MAX_BACKOFF = 5.0


class BootError(RuntimeError):
    """Workers failed to boot too many times in a row; the master gave up."""


class Phase(enum.Enum):
    """Where the master is in its life."""

    RUNNING = "running"
    STOPPING_GRACEFULLY = "stopping gracefully"
    STOPPING_FAST = "stopping fast"


class Master:
    """Supervises the worker processes of one :class:`~prefork.engine.PreforkMixIn` server.

    Its size: the master is the one place where decisions are taken, and every
    decision reads the same state (the workers, the generation, the phase, the
    target, the boot back-off).  Split across objects, that state would need
    to be passed around or shared, and the invariants the single loop keeps
    (a signal never interrupts a decision; a worker is retired only once its
    replacement is ready) would no longer be visible from one file.  What needs
    none of that state lives beside it: the pool policy (:mod:`~prefork.engine.pool`),
    the notices and worker records (:mod:`~prefork.engine.process`), the metrics
    endpoint (:mod:`~prefork.engine.metrics`).  The loop itself is :meth:`run` and
    :meth:`turn`; the sections below are what one turn calls.
    """

    def __init__(self, server: Any) -> None:
        self.server = server
        self.target = server.configured_workers()
        self.generation = 1
        self.workers: dict[int, WorkerProcess] = {}
        self.restarts: collections.Counter[Cause] = collections.Counter()
        self.children = ChildProcesses()
        self.scoreboard = _open_scoreboard(max(64, 4 * self.target + 8), _scoreboard_path(server))
        self.phase = Phase.RUNNING
        self.stop_deadline = 0.0
        self.boot_failures = 0
        self.last_boot_failure = ""
        self.next_spawn_at = 0.0
        self.spawning_suspended = False
        self.waiting_for_slots = False
        self.gave_up = False
        self.stop_requested = False
        self.waker = Waker()
        self.selector = selectors.DefaultSelector()
        self._notify_read, self._notify_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        # Workers hold the read end; it reads EOF once the master is gone.
        self._alive_read, self._alive_write = os.pipe2(os.O_CLOEXEC)
        self._notice_buffer = b""
        self._pidfds: dict[int, int] = {}
        self.signal_actions = {
            signal.SIGHUP: self.reload,
            signal.SIGTERM: self.stop_gracefully,
            signal.SIGINT: self.stop_fast,
            signal.SIGQUIT: self.stop_fast,
            signal.SIGTTIN: self.add_worker,
            signal.SIGTTOU: self.remove_worker,
            signal.SIGUSR1: self.reopen_logs,
            signal.SIGWINCH: self.stop_all_workers,
            signal.SIGCHLD: lambda: None,  # it only wakes the loop; reaping follows
            signal.SIGUSR2: self.upgrade,
        }
        #: Other children to reap (a re-executed master), with what to do when they exit.
        self.adopted = ChildProcesses()
        self._adopted_callbacks: dict[int, Callable[[ExitedChild], None]] = {}
        self.settled = False
        self._memory_checked_at = 0.0
        #: Requests served by workers that have exited (keeps the metrics' total monotonic).
        self.retired_requests = 0
        self.metrics = _metrics_endpoint(server, self)

    # -- the loop ---------------------------------------------------------------------------

    def run(self, poll_interval: float) -> None:
        """Supervise until every worker is gone after a stop; raise BootError on a crash loop."""
        if can_install_handlers():  # the main thread: the process is ours to name
            set_title("master", self.server.proc_name)
        self.selector.register(self.waker, selectors.EVENT_READ, "waker")
        self.selector.register(self._notify_read, selectors.EVENT_READ, "notice")
        if self.metrics is not None:
            self.metrics.register(self.selector)
            logger.info("master: metrics on %s", _describe_address(self.metrics.address))
        with SignalQueue(MASTER_SIGNALS, self.waker) as self.signals:
            self.server.when_ready()
            logger.info(
                "master %d: serving %s with %d worker(s) x %d thread(s)",
                os.getpid(),
                ", ".join(_listener_texts(self.server)),
                self.target,
                self.server.threads,
            )
            self.maintain_worker_count()
            while self.phase is Phase.RUNNING or self.workers:
                for key, events in self.selector.select(self._select_timeout(poll_interval)):
                    if self.metrics is not None and key.data is self.metrics:
                        self.metrics.handle(key, events)
                self.waker.drain()
                self.turn()
                if self.metrics is not None:
                    self.metrics.expire(time.monotonic())
        logger.info("master %d exiting (%s)", os.getpid(), self._exit_reason())
        if self.gave_up:
            raise BootError(
                f"workers failed to boot {self.boot_failures} times in a row"
                f" (last: {self.last_boot_failure})"
            )

    def _exit_reason(self) -> str:
        if self.gave_up:
            return "workers failed to boot"
        return "graceful stop" if self.phase is Phase.STOPPING_GRACEFULLY else "fast stop"

    def turn(self) -> None:
        """One turn of the loop: signals, notices, reaping, timeouts, worker count."""
        for sig in self.signals.pop_all():
            level = logging.DEBUG if sig == signal.SIGCHLD else logging.INFO
            logger.log(level, "master: received %s", sig.name)
            self.signal_actions[sig]()
        if self.stop_requested and self.phase is Phase.RUNNING:
            self.stop_gracefully()
        self.read_notices()
        self.reap_workers()
        self.reap_adopted()
        now = time.monotonic()
        self.kill_unresponsive_workers(now)
        if self.phase is Phase.RUNNING:
            self.recycle_oversized_workers(now)
            self.maintain_worker_count()
            self._report_settled()
        else:
            self.finish_stopping(now)
        self.server.master_service_actions()

    def _select_timeout(self, poll_interval: float) -> float:
        timeout = poll_interval
        now = time.monotonic()
        if self.next_spawn_at > now:
            timeout = min(timeout, self.next_spawn_at - now)
        worker_timeout = float(self.server.worker_timeout)
        timeout = min(timeout, max(0.05, worker_timeout / 4))
        deadlines = [w.stop_deadline for w in self.workers.values() if w.stop_deadline]
        if self.phase is Phase.STOPPING_FAST:
            deadlines.append(self.stop_deadline)
        if self.metrics is not None and (deadline := self.metrics.next_deadline()) is not None:
            deadlines.append(deadline)
        for deadline in deadlines:
            timeout = min(timeout, max(0.01, deadline - now))
        return max(0.0, timeout)

    def request_stop(self) -> None:
        """Ask the loop, from any thread, to stop gracefully (``shutdown()``)."""
        self.stop_requested = True
        self.waker.wake()

    # -- signal actions ---------------------------------------------------------------------

    def reload(self) -> None:
        """``HUP``: start a new generation; the old one stops as the new one gets ready."""
        if self.phase is not Phase.RUNNING:
            return
        self.server.on_reload()  # may change settings, the worker count among them
        self.generation += 1
        self.target = self.server.configured_workers()
        self.boot_failures = 0
        self.last_boot_failure = ""
        self.next_spawn_at = 0.0
        self.spawning_suspended = False
        logger.info("master: reloading, generation %d", self.generation)

    def stop_gracefully(self) -> None:
        """``TERM``: workers finish in-flight requests and the backlog, then exit."""
        if self.phase is Phase.RUNNING:
            self.server.on_shutdown()
            self.phase = Phase.STOPPING_GRACEFULLY
            self.stop_deadline = time.monotonic() + float(self.server.graceful_timeout)
            for worker in list(self.workers.values()):
                self.retire(worker, "shutting down", cause=Cause.SHUTDOWN)

    def stop_fast(self) -> None:
        """``INT``/``QUIT``: workers exit at once."""
        if self.phase is not Phase.STOPPING_FAST:
            if self.phase is Phase.RUNNING:
                self.server.on_shutdown()
            self.phase = Phase.STOPPING_FAST
            self.stop_deadline = time.monotonic() + min(float(self.server.graceful_timeout), 1.0)
            for worker in self.workers.values():
                self._signal(worker, signal.SIGQUIT)

    def upgrade(self) -> None:
        """``USR2``: start a new master beside this one (see the server's ``on_upgrade``)."""
        if self.phase is Phase.RUNNING:
            self.server.on_upgrade(self)

    def add_worker(self) -> None:
        """``TTIN``: one worker more (up to what the scoreboard holds through a reload)."""
        if self.target + 1 > self.scoreboard.slots // 2:
            logger.warning("master: SIGTTIN ignored: %d workers is the limit", self.target)
            return
        self.target += 1
        logger.info("master: workers %d", self.target)

    def remove_worker(self) -> None:
        """``TTOU``: one worker fewer (at least one stays)."""
        self.target = max(1, self.target - 1)
        logger.info("master: workers %d", self.target)

    def reopen_logs(self) -> None:
        """``USR1``: reopen the master's log files and tell the workers to do the same."""
        # Logged after the reopen, so that the line lands in the new file (the
        # "received SIGUSR1" line went to the old one, now rotated away).
        logger.info("master: reopened %d log file(s)", reopen_log_files())
        for worker in self.workers.values():
            self._signal(worker, signal.SIGUSR1)

    def stop_all_workers(self) -> None:
        """``WINCH``: stop every worker gracefully but keep the master (not on a terminal)."""
        if any(stream.isatty() for stream in (sys.stdin, sys.stdout, sys.stderr) if stream):
            logger.info("master: SIGWINCH ignored (attached to a terminal)")
            return
        self.target = 0

    # -- worker notices ---------------------------------------------------------------------

    def read_notices(self) -> None:
        """Read the one-line notices workers write: ready, boot failure, recycle."""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self._notify_read, 65536):
                self._notice_buffer += chunk
        notices, self._notice_buffer = decode_notices(self._notice_buffer)
        for kind, index, detail in notices:
            worker = self._worker_at(index)
            if worker is None:
                continue
            if kind is Notice.READY:
                worker.ready = True
                self.boot_failures = 0
                logger.info("master: %r ready", worker)
            elif kind is Notice.BOOT_FAILED:
                self.last_boot_failure = detail
            elif kind is Notice.SERVED_MAX_REQUESTS:
                worker.recycle = True
                worker.recycle_cause = Cause.MAX_REQUESTS
                logger.info("master: %r served max_requests; replacing it", worker)

    def _worker_at(self, index: int) -> WorkerProcess | None:
        for worker in self.workers.values():
            if worker.index == index:
                return worker
        return None

    # -- spawning and reaping ---------------------------------------------------------------

    def spawn_worker(self) -> WorkerProcess:
        """Fork a worker of the current generation."""
        index = self.scoreboard.free_slot()
        self.scoreboard.claim(index, 0, self.generation)
        worker = WorkerProcess(index, self.generation)
        worker.retrying_boot = self.boot_failures > 0
        self.server.pre_fork(worker)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)
        try:
            worker.pid = fork_child(lambda: self._worker_main(worker, blocked))
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self.scoreboard.set_pid(index, worker.pid)
        self.workers[worker.pid] = worker
        self.children.add(worker.pid)
        self._watch_exit(worker.pid)
        logger.debug("master: spawned %r", worker)
        return worker

    def _worker_main(self, worker: WorkerProcess, blocked: Any) -> int:
        """The first code a new worker runs (in the child)."""
        reset_signal_handlers(MASTER_SIGNALS)
        for sig in IGNORED_SIGNALS:
            signal.signal(sig, _ignore_signal)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self._close_master_resources()
        worker.pid = os.getpid()
        set_title("worker", self.server.proc_name)
        runner = Worker(
            self.server,
            worker,
            self.scoreboard.slot(worker.index),
            master_alive_fd=self._alive_read,
            notify_fd=self._notify_write,
            scoreboard=self.scoreboard,
        )
        try:
            return runner.run()
        except BaseException:
            logger.exception("worker %d crashed", worker.index)
            return ExitCode.BOOT_ERROR if not worker.ready else 1

    def _close_master_resources(self) -> None:
        """In a new worker: drop what only the master uses."""
        if self.metrics is not None:
            self.metrics.close_in_child()
        self.selector.close()
        self.waker.close()
        for fd in [self._notify_read, self._alive_write, *self._pidfds.values()]:
            os.close(fd)
        self._pidfds.clear()

    def _watch_exit(self, pid: int) -> None:
        """Wake the loop when ``pid`` exits, even without SIGCHLD (a master in a thread)."""
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            return  # no pidfds here: the loop's tick and SIGCHLD (main thread) do it
        self._pidfds[pid] = fd
        self.selector.register(fd, selectors.EVENT_READ, "exit")

    def _unwatch_exit(self, pid: int) -> None:
        fd = self._pidfds.pop(pid, None)
        if fd is not None:
            self.selector.unregister(fd)
            os.close(fd)

    def reap_workers(self) -> None:
        """Reap exited workers (non-blocking, by pid), log how they ended, free their slots."""
        for exited in self.children.reap():
            self._unwatch_exit(exited.pid)
            worker = self.workers.pop(exited.pid, None)
            if worker is None:
                continue
            self.retired_requests += self.scoreboard.read(worker.index).requests
            self.scoreboard.release(worker.index)
            self._log_exit(worker, exited)
            if worker.retiring or self.phase is not Phase.RUNNING:
                continue
            if worker.ready:
                self.restarts[Cause.CRASH] += 1
            else:
                self.restarts[Cause.BOOT_FAILURE] += 1
                self._boot_failed(worker, exited)

    def _log_exit(self, worker: WorkerProcess, exited: ExitedChild) -> None:
        expected = worker.retiring or self.phase is not Phase.RUNNING
        level = logging.INFO if expected and exited.exitcode == 0 else logging.WARNING
        logger.log(level, "master: %r exited: %s", worker, exited.describe())

    def _boot_failed(self, worker: WorkerProcess, exited: ExitedChild) -> None:
        if self.phase is not Phase.RUNNING:
            return  # stopping anyway: nothing to retry
        self.boot_failures += 1
        if not self.last_boot_failure:
            self.last_boot_failure = exited.describe()
        limit = int(self.server.max_boot_failures)
        if self.boot_failures >= limit and self._older_generation_serving():
            # A reload whose new code cannot boot: the old workers keep serving
            # until the next HUP brings code that can.
            logger.error(
                "master: generation %d failed to boot %d times in a row (last: %s);"
                " older workers keep serving; fix the code and send HUP",
                self.generation,
                self.boot_failures,
                self.last_boot_failure,
            )
            self.spawning_suspended = True
            return
        if self.boot_failures >= limit:
            self.gave_up = True
            logger.error(
                "master: workers failed to boot %d times in a row (last: %s); giving up",
                self.boot_failures,
                self.last_boot_failure,
            )
            self.stop_fast()
            return
        backoff = min(_MAX_BACKOFF, 0.1 * 2 ** (self.boot_failures - 1))
        self.next_spawn_at = time.monotonic() + backoff
        logger.warning(
            "master: %r failed to boot (%s); retrying in %.1fs",
            worker,
            self.last_boot_failure or exited.describe(),
            backoff,
        )

    def _older_generation_serving(self) -> bool:
        return any(
            w.ready and not w.retiring and w.generation < self.generation
            for w in self.workers.values()
        )

    def adopt_child(self, pid: int, on_exit: Callable[[ExitedChild], None]) -> None:
        """Reap ``pid`` (not a worker) too, calling ``on_exit`` when it has exited."""
        self.adopted.add(pid)
        self._adopted_callbacks[pid] = on_exit

    def reap_adopted(self) -> None:
        """Reap adopted children that exited and tell whoever adopted them."""
        for exited in self.adopted.reap():
            callback = self._adopted_callbacks.pop(exited.pid, None)
            if callback is not None:
                callback(exited)

    def _report_settled(self) -> None:
        """Call ``workers_ready()`` each time the pool becomes complete and current."""
        current = [w for w in self.workers.values() if not w.retiring]
        settled = (
            len(current) == self.target
            and all(w.ready and w.generation == self.generation for w in current)
            and not any(w.retiring for w in self.workers.values())
        )
        if settled and not self.settled:
            self.server.workers_ready()
        self.settled = settled

    # -- timeouts ---------------------------------------------------------------------------

    def kill_unresponsive_workers(self, now: float) -> None:
        """Retire stuck workers; dump and kill workers past their graceful deadline."""
        timeout = float(self.server.worker_timeout)
        for worker in list(self.workers.values()):
            if worker.killed:
                continue
            if worker.retiring:
                self._enforce_deadline(worker, now)
                continue
            slot = self.scoreboard.read(worker.index)
            if slot.state is WorkerState.RECYCLE and not worker.recycle:
                worker.recycle = True
                worker.recycle_cause = Cause.MAX_REQUESTS
            stuck = _why_stuck(worker, slot, now, timeout)
            if stuck:
                self.retire(worker, stuck, cause=Cause.TIMEOUT)

    def recycle_oversized_workers(self, now: float) -> None:
        """Gracefully replace workers whose resident memory passed ``max_worker_memory``."""
        limit = int(getattr(self.server, "max_worker_memory", 0) or 0)
        if not limit or now - self._memory_checked_at < _MEMORY_CHECK_INTERVAL:
            return
        self._memory_checked_at = now
        for worker in list(self.workers.values()):
            if not worker.ready or worker.retiring or worker.recycle:
                continue
            try:
                rss = psutil.Process(worker.pid).memory_info().rss
            except psutil.Error:
                continue
            if rss > limit:
                logger.warning(
                    "master: %r uses %d MiB, over max_worker_memory %d MiB; replacing it",
                    worker,
                    rss >> 20,
                    limit >> 20,
                )
                worker.recycle = True
                worker.recycle_cause = Cause.MEMORY

    def _enforce_deadline(self, worker: WorkerProcess, now: float) -> None:
        if worker.stop_deadline is None or now < worker.stop_deadline:
            return
        if worker.dump_sent_at is None:
            logger.error("master: %r did not stop in time; dumping its stacks", worker)
            self._signal(worker, DUMP_SIGNAL)
            worker.dump_sent_at = now
            worker.stop_deadline = now + _DUMP_GRACE
        else:
            logger.error("master: killing %r", worker)
            self._signal(worker, signal.SIGKILL)
            worker.killed = True

    def retire(self, worker: WorkerProcess, reason: str, *, cause: Cause) -> None:
        """Stop ``worker`` gracefully: it stops accepting and gets ``graceful_timeout``."""
        if worker.retiring:
            return
        level = logging.ERROR if cause is Cause.TIMEOUT else logging.INFO
        self.restarts[cause] += 1
        logger.log(level, "master: retiring %r: %s", worker, reason)
        worker.retiring = True
        worker.stop_deadline = time.monotonic() + float(self.server.graceful_timeout)
        self._signal(worker, signal.SIGTERM)

    def _signal(self, worker: WorkerProcess, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, sig)

    # -- worker count -----------------------------------------------------------------------

    def maintain_worker_count(self) -> None:
        """Spawn and retire workers so that ``target`` fresh ones serve (:mod:`.pool` decides)."""
        plan = plan_pool(
            self.workers.values(),
            target=self.target,
            generation=self.generation,
            slots=self.scoreboard.slots,
            rolling_reload=bool(self.server.rolling_reload),
            may_spawn=not self.spawning_suspended and time.monotonic() >= self.next_spawn_at,
        )
        for worker, reason, cause in plan.retire:
            self.retire(worker, reason, cause=cause)
        if plan.short_of_slots and not self.waiting_for_slots:
            # Retiring workers still hold their slots; the rest spawn once they are reaped.
            logger.warning(
                "master: all %d worker slots in use (%d retiring); waiting for them to exit",
                self.scoreboard.slots,
                sum(w.retiring for w in self.workers.values()),
            )
        if plan.short_of_slots is not None:
            self.waiting_for_slots = plan.short_of_slots
        for _ in range(plan.spawn):
            self.spawn_worker()

    def finish_stopping(self, now: float) -> None:
        """Fast stop: kill what is left once the short grace is over.

        A graceful stop needs nothing here: each worker was retired with its
        own deadline, which :meth:`kill_unresponsive_workers` enforces.
        """
        if self.phase is not Phase.STOPPING_FAST or now < self.stop_deadline:
            return
        for worker in self.workers.values():
            if not worker.killed:
                self._signal(worker, signal.SIGKILL)
                worker.killed = True

    def close(self) -> None:
        """Kill and reap any worker left, and release the master's resources (idempotent)."""
        for worker in self.workers.values():
            self._signal(worker, signal.SIGKILL)
        self.children.reap(blocking=True)
        self.workers.clear()
        for pid in list(self._pidfds):
            self._unwatch_exit(pid)
        if self._notify_read >= 0:
            if self.metrics is not None:
                self.metrics.close()
            self.selector.close()
            self.waker.close()
            for fd in (self._notify_read, self._notify_write, self._alive_read, self._alive_write):
                os.close(fd)
            self._notify_read = self._notify_write = self._alive_read = self._alive_write = -1
            self.scoreboard.close()


def _ignore_signal(signum: int, frame: object) -> None:
    """A handler that does nothing (reset to the default by ``exec``, unlike SIG_IGN)."""


def _scoreboard_path(server: Any) -> str | None:
    """Where to publish the scoreboard for ``prefork status``, if the server asks to."""
    if not getattr(server, "publish_scoreboard", False) or not os.path.isdir(SHM_DIR):
        return None
    return published_path(os.getpid())


def _open_scoreboard(slots: int, path: str | None) -> Scoreboard:
    """The scoreboard, published at ``path`` when possible: ``prefork status`` is not worth
    failing to start for, so an unwritable path falls back to a private board."""
    if path is not None:
        try:
            return Scoreboard(slots, path)
        except OSError as error:
            logger.warning(
                "master: cannot publish the scoreboard (%s); prefork status will not see it", error
            )
    return Scoreboard(slots)


def _why_stuck(worker: WorkerProcess, slot: SlotView, now: float, timeout: float) -> str:
    """Why ``worker`` counts as stuck, or ``""`` when it is healthy."""
    if not worker.ready:
        booting = now - worker.spawned_at
        return f"did not boot within {timeout:g}s" if booting > timeout else ""
    if now - slot.heartbeat > timeout:
        return f"no heartbeat for {now - slot.heartbeat:.1f}s"
    longest = slot.longest_request(now)
    return f"a request has run for {longest:.1f}s" if longest > timeout else ""


def _listener_texts(server: Any) -> list[str]:
    """Each listener of ``server`` (and its extra servers) in ``--bind`` syntax."""
    texts = []
    for each in (server, *getattr(server, "extra_servers", ())):
        try:
            texts.append(bind_text(each.socket))
        except (AttributeError, OSError):  # no socket of its own (a custom server)
            texts.append(repr(getattr(each, "server_address", "?")))
    return texts


def _metrics_endpoint(server: Any, master: Master) -> Any:
    """The Prometheus endpoint, when the server asks for one (``metrics_bind``)."""
    address = getattr(server, "metrics_bind", None)
    if not address:
        return None
    from prefork.engine.metrics import MetricsEndpoint, master_renderer

    return MetricsEndpoint(address, master_renderer(master), reuse_port=True)


def _describe_address(address: Any) -> str:
    if isinstance(address, tuple):
        host = f"[{address[0]}]" if ":" in address[0] else address[0]
        return f"http://{host}:{address[1]}/metrics"
    return f"unix:{address}"
