"""What the master and a worker say about a worker process, and the words they use for it.

The master keeps a :class:`WorkerProcess` for each worker it forked; the worker
tells the master about itself in one-line notices on a pipe (:class:`Notice`),
ends with an :class:`ExitCode`, and the master counts each replacement under a
:class:`Cause`.  Both sides, and the metrics, import this module and not each other.
"""

from __future__ import annotations

import enum
import time

__all__ = ["Cause", "ExitCode", "Notice", "WorkerProcess", "decode_notices", "encode_notice"]

#: The longest detail a notice carries (a boot failure's message): a pipe write of
#: at most PIPE_BUF bytes is atomic, so notices of several workers never interleave.
_MAX_DETAIL = 400


class ExitCode(enum.IntEnum):
    """How a worker process ends."""

    OK = 0
    BOOT_ERROR = 3
    MASTER_GONE = 4


class Cause(str, enum.Enum):
    """Why a worker was stopped or replaced (counted in ``Master.restarts``)."""

    CRASH = "crash"
    BOOT_FAILURE = "boot_failure"
    TIMEOUT = "timeout"
    RELOAD = "reload"
    MAX_REQUESTS = "max_requests"
    MEMORY = "memory"
    SCALE_DOWN = "scale_down"
    SHUTDOWN = "shutdown"


class Notice(str, enum.Enum):
    """What a worker tells the master, one line each: ``<kind> <index> [<detail>]``."""

    READY = "R"
    BOOT_FAILED = "F"
    SERVED_MAX_REQUESTS = "C"


def encode_notice(kind: Notice, index: int, detail: str = "") -> bytes:
    """The line for one notice (newlines in ``detail`` become spaces)."""
    text = f"{kind.value} {index}"
    if detail:
        text += " " + detail.replace("\n", " ")[:_MAX_DETAIL]
    return (text + "\n").encode("utf-8", "replace")


def decode_notices(buffer: bytes) -> tuple[list[tuple[Notice, int, str]], bytes]:
    """The complete notices in ``buffer``, and the partial line left after them.

    A line that is not a notice (which only a bug could write) is skipped.
    """
    *lines, rest = buffer.split(b"\n")
    notices = []
    for line in lines:
        kind_text, _, after = line.decode("utf-8", "replace").partition(" ")
        index_text, _, detail = after.partition(" ")
        try:
            kind = Notice(kind_text)
        except ValueError:
            continue
        if index_text.isdigit():
            notices.append((kind, int(index_text), detail))
    return notices, rest


class WorkerProcess:
    """What the master knows of one worker (and what hooks receive as ``worker``)."""

    def __init__(self, index: int, generation: int) -> None:
        self.index = index
        self.generation = generation
        self.pid = 0
        self.spawned_at = time.monotonic()
        self.ready = False
        self.recycle = False
        self.recycle_cause: Cause | None = None
        self.retiring = False
        self.stop_deadline: float | None = None
        self.dump_sent_at: float | None = None
        self.killed = False
        #: Set when an earlier worker of this generation failed to boot (and logged why).
        self.retrying_boot = False

    def __repr__(self) -> str:
        return f"<worker {self.index} pid={self.pid} generation={self.generation}>"
