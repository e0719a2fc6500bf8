"""``--reload``: notice when a source file of the application changes.

Polled from the master's loop (at most once a second), by modification time:
no thread and no inotify, and a change seen makes the command send itself
``HUP``, the same graceful reload an operator would ask for.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

__all__ = ["SourceWatcher"]


class SourceWatcher:
    """The modification times of some files, compared at most every ``interval`` seconds."""

    def __init__(self, paths: Sequence[str] = (), interval: float = 1.0) -> None:
        self.paths = list(paths)
        self.interval = interval
        self._mtimes: dict[str, float] = {}
        self._checked_at = 0.0

    def snapshot(self) -> None:
        """Take the current times as the reference (when the master starts serving)."""
        self._mtimes = _mtimes(self.paths)

    def changed(self, now: float) -> bool:
        """Whether a file changed since the last look (``False`` until ``interval`` passed)."""
        if now - self._checked_at < self.interval:
            return False
        self._checked_at = now
        mtimes = _mtimes(self.paths)
        changed, self._mtimes = mtimes != self._mtimes, mtimes
        return changed


def _mtimes(paths: Sequence[str]) -> dict[str, float]:
    """The modification time of each file that exists."""
    found = {}
    for path in paths:
        with contextlib.suppress(OSError):
            found[path] = os.stat(path).st_mtime
    return found
