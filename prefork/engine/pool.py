"""The pool's policy: which workers to retire and how many to fork, from what the master knows.

A pure function of the workers' records, so that the rules of a reload, a
recycle and a scale change read in one place, and the master only carries
them out (:meth:`~prefork.engine.master.Master.maintain_worker_count`):

* a worker is *fresh* when it belongs to the current generation and was not
  asked to be recycled; the others still serving are *stale*;
* a stale worker is retired only once a fresh one is ready to take its place,
  so capacity never dips during a reload; one superseded before it ever
  served (reloads faster than boots) is retired at once;
* fresh workers beyond the target are retired, the oldest first (scale down);
* missing workers are forked all at once after a reload, or one at a time
  (``rolling_reload``, and when replacing recycled workers of the current
  generation), never beyond the scoreboard's free slots.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from prefork.engine.process import Cause, WorkerProcess

__all__ = ["PoolPlan", "plan_pool"]


@dataclass
class PoolPlan:
    """What to do this turn: retire these workers, then fork ``spawn`` new ones."""

    #: (worker, reason for the log, cause for the metrics), in the order to retire them.
    retire: list[tuple[WorkerProcess, str, Cause]] = field(default_factory=list)
    spawn: int = 0
    #: Whether workers are missing for want of free slots (``None``: spawning was not due).
    short_of_slots: bool | None = None


def plan_pool(
    workers: Iterable[WorkerProcess],
    *,
    target: int,
    generation: int,
    slots: int,
    rolling_reload: bool,
    may_spawn: bool,
) -> PoolPlan:
    """The plan that brings the pool to ``target`` fresh workers of ``generation``.

    ``slots`` is the scoreboard's size (every worker not yet reaped holds one);
    ``may_spawn`` is false while the master backs off after boot failures.
    """
    workers = list(workers)
    serving = [w for w in workers if not w.retiring]
    fresh = [w for w in serving if w.generation == generation and not w.recycle]
    stale = sorted(
        (w for w in serving if w.generation != generation or w.recycle),
        key=lambda w: (w.generation, w.spawned_at),
    )
    ready = [w for w in fresh if w.ready]
    plan = PoolPlan()
    # A worker superseded before it served only holds a slot: stop it now, or a storm of
    # reloads piles up generations of booting workers.
    for worker in [w for w in stale if not w.ready and w.generation != generation]:
        plan.retire.append((worker, "superseded while booting", Cause.RELOAD))
        stale.remove(worker)
    for worker in stale[: max(0, len(ready) + len(stale) - target)]:
        cause = (worker.recycle_cause or Cause.MAX_REQUESTS) if worker.recycle else Cause.RELOAD
        plan.retire.append((worker, f"replaced ({cause.value})", cause))
    surplus = sorted(fresh, key=lambda w: w.spawned_at)[: max(0, len(fresh) - target)]
    plan.retire += [(worker, "scaling down", Cause.SCALE_DOWN) for worker in surplus]
    missing = target - len(fresh)
    if missing <= 0 or not may_spawn:
        return plan
    booting = len(fresh) - len(ready)
    one_at_a_time = bool(stale) and (
        rolling_reload or all(w.generation == generation for w in stale)
    )
    if one_at_a_time:
        # One extra process at most, counting stale workers still draining.
        missing = 0 if booting or len(workers) > target else 1
    free = slots - len(workers)
    plan.short_of_slots = missing > free
    plan.spawn = min(missing, free)
    return plan
