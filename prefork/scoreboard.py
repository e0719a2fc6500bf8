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

import enum
import mmap
import struct
import time
from dataclasses import dataclass


class WorkerState(enum.IntEnum):
    """What a worker is doing, as the scoreboard shows it."""

    FREE = 0
    BOOTING = 1
    READY = 2
    RECYCLE = 3  # served max_requests: asks the master for a replacement
    DRAINING = 4


# pid, generation, state, requests, busy threads, heartbeat, oldest busy request start
_SLOT = struct.Struct("=qqqqqdd")
_PID, _GENERATION, _STATE, _REQUESTS, _BUSY, _HEARTBEAT, _OLDEST = range(0, _SLOT.size, 8)


@dataclass(frozen=True)
class SlotView:
    """A snapshot of one worker's slot."""

    index: int
    pid: int
    generation: int
    state: WorkerState
    requests: int
    busy: int
    heartbeat: float
    oldest_request_start: float

    def longest_request(self, now: float) -> float:
        """Seconds the oldest in-flight request has run (0 when idle)."""
        return now - self.oldest_request_start if self.busy and self.oldest_request_start else 0.0


class Scoreboard:
    """A fixed number of worker slots in an anonymous shared mapping."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, slots * _SLOT.size)

    def close(self) -> None:
        """Unmap the region."""
        self._map.close()

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
            time.monotonic(),
            0.0,
        )

    def set_pid(self, index: int, pid: int) -> None:
        """Record the pid of the worker in slot ``index`` once it is forked."""
        struct.pack_into("=q", self._map, index * _SLOT.size + _PID, pid)

    def release(self, index: int) -> None:
        """Mark slot ``index`` free after its worker was reaped."""
        _SLOT.pack_into(self._map, index * _SLOT.size, 0, 0, WorkerState.FREE, 0, 0, 0.0, 0.0)

    def read(self, index: int) -> SlotView:
        """A snapshot of slot ``index``."""
        pid, generation, state, requests, busy, heartbeat, oldest = _SLOT.unpack_from(
            self._map, index * _SLOT.size
        )
        return SlotView(
            index, pid, generation, WorkerState(state), requests, busy, heartbeat, oldest
        )

    def slot(self, index: int) -> WorkerSlot:
        """The writer side of slot ``index``, for the worker that owns it."""
        return WorkerSlot(self._map, index * _SLOT.size)


class WorkerSlot:
    """A worker's own slot: it writes its state, counters and heartbeat here."""

    def __init__(self, region: mmap.mmap, offset: int) -> None:
        self._region = region
        self._offset = offset

    def _put(self, field: int, fmt: str, value: float) -> None:
        struct.pack_into(fmt, self._region, self._offset + field, value)

    def set_state(self, state: WorkerState) -> None:
        """Record what the worker is doing."""
        self._put(_STATE, "=q", int(state))

    def heartbeat(self, busy: int, requests: int, oldest_request_start: float) -> None:
        """Record liveness and load; called from the worker's loop."""
        self._put(_BUSY, "=q", busy)
        self._put(_REQUESTS, "=q", requests)
        self._put(_OLDEST, "=d", oldest_request_start)
        self._put(_HEARTBEAT, "=d", time.monotonic())
