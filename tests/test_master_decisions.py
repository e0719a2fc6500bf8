"""The master's decisions, driven without fork: a fake spawn and a recorded kill.

End-to-end tests (tests/engine) prove the processes; these prove the policy
(who is spawned, who is retired, when) step by step and deterministically.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from prefork.core.children import ExitedChild
from prefork.engine.master import Master, Phase
from prefork.engine.process import WorkerProcess


class FakeMaster(Master):
    """A Master whose spawn and kill only record what they would do."""

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.pids = itertools.count(1000)
        self.sent: list[tuple[int, signal.Signals]] = []

    def spawn_worker(self) -> WorkerProcess:
        index = self.scoreboard.free_slot()
        self.scoreboard.claim(index, 0, self.generation)
        worker = WorkerProcess(index, self.generation)
        worker.pid = next(self.pids)
        self.workers[worker.pid] = worker
        return worker

    def _signal(self, worker: WorkerProcess, sig: signal.Signals) -> None:
        self.sent.append((worker.pid, sig))

    # test helpers

    def make_ready(self, *workers: WorkerProcess) -> None:
        for worker in workers:
            worker.ready = True
            self.boot_failures = 0

    def exit(self, worker: WorkerProcess, status: int = 0) -> None:
        """What reap_workers does for one exited worker."""
        del self.workers[worker.pid]
        self.scoreboard.release(worker.index)
        if not worker.ready and not worker.retiring:
            self._boot_failed(worker, ExitedChild(worker.pid, status))

    def generations(self) -> list[int]:
        return sorted(w.generation for w in self.workers.values() if not w.retiring)

    def retired(self) -> set[int]:
        return {pid for pid, sig in self.sent if sig == signal.SIGTERM}


def make_server(**settings: Any) -> Any:
    defaults = dict(
        workers=2,
        threads=4,
        worker_timeout=30.0,
        graceful_timeout=30.0,
        rolling_reload=False,
        max_boot_failures=3,
        proc_name=None,
        server_address=("127.0.0.1", 0),
    )
    defaults.update(settings)
    server = SimpleNamespace(**defaults)
    server.configured_workers = lambda: server.workers
    for hook in ("on_reload", "on_shutdown", "workers_ready", "master_service_actions"):
        setattr(server, hook, lambda: None)
    return server


@pytest.fixture
def master(request: pytest.FixtureRequest) -> Iterator[FakeMaster]:
    settings = getattr(request, "param", {})
    fake = FakeMaster(make_server(**settings))
    try:
        yield fake
    finally:
        fake.workers.clear()
        fake.close()


def test_starts_the_configured_number(master: FakeMaster) -> None:
    master.maintain_worker_count()
    assert len(master.workers) == 2
    master.maintain_worker_count()
    assert len(master.workers) == 2, "a second turn must not spawn more"


def test_reload_retires_old_workers_only_as_new_ones_get_ready(master: FakeMaster) -> None:
    master.maintain_worker_count()
    old = list(master.workers.values())
    master.make_ready(*old)
    master.reload()
    master.maintain_worker_count()
    new = [w for w in master.workers.values() if w.generation == 2]
    assert len(new) == 2
    assert not master.retired(), "nothing may stop before a new worker is ready"
    master.make_ready(new[0])
    master.maintain_worker_count()
    assert len(master.retired()) == 1, "one ready replacement retires one old worker"
    master.make_ready(new[1])
    master.maintain_worker_count()
    assert master.retired() == {w.pid for w in old}


def test_reloads_faster_than_boots_stop_the_superseded_workers(master: FakeMaster) -> None:
    master.maintain_worker_count()
    old = list(master.workers.values())
    master.make_ready(*old)
    for _ in range(200):  # each HUP acted on before the previous generation booted
        master.reload()
        master.maintain_worker_count()
        for worker in [w for w in master.workers.values() if w.retiring and not w.ready]:
            master.exit(worker)
    assert master.generation == 201
    assert not master.retired() & {w.pid for w in old}, "the serving generation must stay"
    booting = [w for w in master.workers.values() if not w.ready]
    assert sorted(w.generation for w in booting) == [201, 201]
    assert len(master.workers) == 4


def test_a_full_scoreboard_defers_spawning(master: FakeMaster) -> None:
    master.maintain_worker_count()
    master.make_ready(*master.workers.values())
    for _ in range(master.scoreboard.slots):  # retiring workers that take long to exit
        master.reload()
        master.maintain_worker_count()
    assert len(master.workers) == master.scoreboard.slots
    assert master.waiting_for_slots
    assert [w for w in master.workers.values() if w.generation == master.generation] == []
    for worker in [w for w in master.workers.values() if w.retiring][:2]:
        master.exit(worker)
    master.maintain_worker_count()
    assert len([w for w in master.workers.values() if w.generation == master.generation]) == 2
    assert not master.waiting_for_slots


@pytest.mark.parametrize("master", [{"rolling_reload": True, "workers": 3}], indirect=True)
def test_rolling_reload_replaces_one_at_a_time(master: FakeMaster) -> None:
    master.maintain_worker_count()
    master.make_ready(*master.workers.values())
    master.reload()
    for _ in range(3):
        master.maintain_worker_count()
        booting = [w for w in master.workers.values() if w.generation == 2 and not w.ready]
        assert len(booting) == 1
        assert len(master.workers) <= 4
        master.maintain_worker_count()  # nothing more while one boots
        assert len(master.workers) <= 4
        master.make_ready(*booting)
        master.maintain_worker_count()
        for worker in [w for w in master.workers.values() if w.retiring]:
            master.exit(worker)
    assert master.generations() == [2, 2, 2]


def test_ttin_ttou_and_winch(master: FakeMaster, monkeypatch: pytest.MonkeyPatch) -> None:
    master.maintain_worker_count()
    master.add_worker()
    master.maintain_worker_count()
    assert len(master.generations()) == 3
    master.remove_worker()
    master.maintain_worker_count()
    assert len(master.generations()) == 2
    master.remove_worker()
    master.remove_worker()
    master.maintain_worker_count()
    assert len(master.generations()) == 1, "TTOU keeps one worker"
    monkeypatch.setattr("sys.stdin", None)
    monkeypatch.setattr("sys.stdout", None)
    monkeypatch.setattr("sys.stderr", None)
    master.stop_all_workers()
    master.maintain_worker_count()
    assert master.generations() == []


def test_recycling_waits_for_the_replacement(master: FakeMaster) -> None:
    master.maintain_worker_count()
    a, b = master.workers.values()
    master.make_ready(a, b)
    a.recycle = True
    b.recycle = True
    master.maintain_worker_count()
    assert not master.retired()
    booting = [w for w in master.workers.values() if not w.ready]
    assert len(booting) == 1, "recycles are spaced: one replacement at a time"
    master.make_ready(*booting)
    master.maintain_worker_count()
    assert master.retired() == {a.pid}


def test_boot_failures_back_off_then_give_up(master: FakeMaster) -> None:
    master.maintain_worker_count()
    first = list(master.workers.values())
    master.exit(first[0], status=3 << 8)
    assert master.next_spawn_at > 0, "a boot failure delays the next spawn"
    master.maintain_worker_count()
    assert len(master.workers) == 1, "no respawn during the back-off"
    master.exit(first[1], status=3 << 8)
    master.next_spawn_at = 0.0
    master.maintain_worker_count()
    third = next(iter(master.workers.values()))
    master.exit(third, status=3 << 8)
    assert master.gave_up and master.phase is Phase.STOPPING_FAST


def test_failed_reload_keeps_the_old_generation(master: FakeMaster) -> None:
    master.maintain_worker_count()
    old = list(master.workers.values())
    master.make_ready(*old)
    master.reload()
    for _ in range(3):
        master.next_spawn_at = 0.0
        master.maintain_worker_count()
        for worker in [w for w in master.workers.values() if w.generation == 2]:
            master.exit(worker, status=3 << 8)
    assert not master.gave_up and master.phase is Phase.RUNNING
    assert master.spawning_suspended
    assert not master.retired()
    assert set(master.workers) == {w.pid for w in old}
    master.reload()
    master.maintain_worker_count()
    assert len([w for w in master.workers.values() if w.generation == 3]) == 2


@pytest.mark.parametrize("master", [{"workers": 1}], indirect=True)
def test_stuck_worker_is_retired_then_dumped_then_killed(master: FakeMaster) -> None:
    master.maintain_worker_count()
    worker = next(iter(master.workers.values()))
    master.make_ready(worker)
    now = master.scoreboard.read(worker.index).heartbeat + 31
    master.kill_unresponsive_workers(now)
    assert master.sent == [(worker.pid, signal.SIGTERM)]
    master.maintain_worker_count()
    assert len(master.generations()) == 1, "a replacement starts at once"
    assert worker.stop_deadline is not None
    master.kill_unresponsive_workers(worker.stop_deadline)
    master.kill_unresponsive_workers(worker.stop_deadline)
    sent_to_stuck = [sig for pid, sig in master.sent if pid == worker.pid]
    assert sent_to_stuck == [signal.SIGTERM, signal.SIGABRT, signal.SIGKILL]
    assert worker.killed
