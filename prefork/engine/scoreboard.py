"""The scoreboard: one slot of shared memory per worker.

The master maps an anonymous shared region before it forks, so every worker
writes its own slot and the master reads them all without a syscall: the heartbeat
is a store into memory, never a file touch (a heartbeat file on a disk-backed
``/tmp`` stalls under I/O load and causes false timeouts).  Times are
``time.monotonic()`` values, comparable across processes on one host.

A slot is written by exactly one worker and read by the master; each field is
an aligned 8-byte word, so a reader sees either the old or the new value.
"""

from __future__ import annotations

import contextlib
import enum
import mmap
import os
import struct
import time
from dataclasses import dataclass
from typing import Any


class WorkerState(enum.IntEnum):
    """What a worker is doing, as the scoreboard shows it."""

    FREE = 0
    BOOTING = 1
    READY = 2
    RECYCLE = 3  # served max_requests: asks the master for a replacement
    DRAINING = 4


# pid, generation, state, requests, busy threads, threads, heartbeat, oldest request start,
# connections accepted
_SLOT = struct.Struct("=qqqqqqddq")
_PID, _GENERATION, _STATE, _REQUESTS, _BUSY, _THREADS, _HEARTBEAT, _OLDEST, _ACCEPTED = range(
    0, _SLOT.size, 8
)
#: The state's place among a slot's unpacked fields (each field is one 8-byte word).
_STATE_FIELD = _STATE // 8


@dataclass(frozen=True)
class SlotView:
    """A snapshot of one worker's slot."""

    index: int
    pid: int
    generation: int
    state: WorkerState
    requests: int
    busy: int
    threads: int
    heartbeat: float
    oldest_request_start: float
    #: Connections taken from the listeners: whether the worker is taking new ones.
    accepted: int = 0

    def longest_request(self, now: float) -> float:
        """Seconds the oldest in-flight request has run (0 when idle)."""
        return now - self.oldest_request_start if self.busy and self.oldest_request_start else 0.0


#: Where a published scoreboard lives: tmpfs, i.e. memory, never a disk.
SHM_DIR = "/dev/shm"


def published_path(master_pid: int) -> str:
    """The file a master with ``master_pid`` publishes its scoreboard in."""
    return os.path.join(SHM_DIR, f"prefork-{master_pid}.scoreboard")


class Scoreboard:
    """A fixed number of worker slots in a shared mapping.

    By default the mapping is anonymous (only the master and its workers see
    it).  With ``path`` it is a file on tmpfs that other processes (``prefork
    status``) can :meth:`attach` to read; the owner removes it on :meth:`close`.
    """

    def __init__(self, slots: int, path: str | None = None) -> None:
        self.slots = slots
        self.path = path
        size = slots * _SLOT.size
        if path is None:
            self._map = mmap.mmap(-1, size)
            return
        # A file already there is a leftover of a killed master that had our pid; it is
        # replaced, never shared (O_EXCL), so two masters cannot write one board.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)

    @classmethod
    def attach(cls, path: str) -> Scoreboard:
        """Map a published scoreboard read-only (raises ``OSError`` if there is none)."""
        board = cls.__new__(cls)
        board.path = None  # not ours to remove
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            board.slots = size // _SLOT.size
            board._map = mmap.mmap(file.fileno(), size, prot=mmap.PROT_READ)
        return board

    def close(self) -> None:
        """Unmap the region (and remove its file, if this process created it)."""
        self._map.close()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.path = None

    def snapshot(self) -> list[SlotView]:
        """Every slot in use."""
        # One unpack of the whole region, and views built only for slots in use: a
        # saturated worker looks at the board every 10 ms, and most slots are free.
        with memoryview(self._map) as region:
            fields = list(_SLOT.iter_unpack(region[: self.slots * _SLOT.size]))
        return [
            _view(index, slot)
            for index, slot in enumerate(fields)
            if slot[_STATE_FIELD] != WorkerState.FREE
        ]

    def free_slot(self) -> int:
        """Index of a free slot; raises ``RuntimeError`` when all are taken."""
        for index in range(self.slots):
            if self.read(index).state == WorkerState.FREE:
                return index
        raise RuntimeError(f"scoreboard full: {self.slots} slots in use")

    def claim(self, index: int, pid: int, generation: int) -> None:
        """Give slot ``index`` to a new worker (done by the master)."""
        _SLOT.pack_into(
            self._map,
            index * _SLOT.size,
            pid,
            generation,
            WorkerState.BOOTING,
            0,
            0,
            0,
            time.monotonic(),
            0.0,
            0,
        )

    def set_pid(self, index: int, pid: int) -> None:
        """Record the pid of the worker in slot ``index`` once it is forked."""
        struct.pack_into("=q", self._map, index * _SLOT.size + _PID, pid)

    def release(self, index: int) -> None:
        """Mark slot ``index`` free after its worker was reaped."""
        _SLOT.pack_into(
            self._map, index * _SLOT.size, 0, 0, WorkerState.FREE, 0, 0, 0, 0.0, 0.0, 0
        )

    def read(self, index: int) -> SlotView:
        """A snapshot of slot ``index``."""
        return _view(index, _SLOT.unpack_from(self._map, index * _SLOT.size))

    def slot(self, index: int) -> WorkerSlot:
        """The writer side of slot ``index``, for the worker that owns it."""
        return WorkerSlot(self._map, index * _SLOT.size)


def _view(index: int, fields: tuple[Any, ...]) -> SlotView:
    """The view of slot ``index`` from its unpacked fields (in ``_SLOT``'s order)."""
    pid, generation, state, *rest = fields
    return SlotView(index, pid, generation, WorkerState(state), *rest)


class WorkerSlot:
    """A worker's own slot: it writes its state, counters and heartbeat here."""

    def __init__(self, region: mmap.mmap, offset: int) -> None:
        self._region = region
        self._offset = offset

    def _put(self, field: int, fmt: str, value: float) -> None:
        struct.pack_into(fmt, self._region, self._offset + field, value)

    def set_threads(self, threads: int) -> None:
        """Record the size of the worker's thread pool."""
        self._put(_THREADS, "=q", threads)

    def set_state(self, state: WorkerState) -> None:
        """Record what the worker is doing."""
        self._put(_STATE, "=q", int(state))

    def heartbeat(
        self, busy: int, requests: int, oldest_request_start: float, accepted: int = 0
    ) -> None:
        """Record liveness and load; called from the worker's loop."""
        self._put(_BUSY, "=q", busy)
        self._put(_REQUESTS, "=q", requests)
        self._put(_ACCEPTED, "=q", accepted)
        self._put(_OLDEST, "=d", oldest_request_start)
        self._put(_HEARTBEAT, "=d", time.monotonic())
