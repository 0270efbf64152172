"""Counters and histograms for operators, kept by the scheduling core at the cost of a few increments.

The dispatcher serves them as Prometheus metrics (``trioschedule._http``);
nothing here knows about Prometheus.  Each task record points at the
:class:`NameStats` of its name from the moment it is recorded, so the hot
path (a start, an outcome) does no lookup: it adds one to a slot, and a
histogram observation is one ``bisect`` into a short tuple of bounds plus two
additions.  Everything else (cumulative buckets, totals, the exposition
format) is computed when someone reads it.  No I/O here.
"""

from __future__ import annotations

from bisect import bisect_left

from .._protocol import messages as m

__all__ = ["QUEUE_WAIT_BUCKETS", "RUN_TIME_BUCKETS", "Histogram", "Metrics", "NameStats", "add_run"]

#: Upper bounds (seconds) of the task run-time histogram's buckets (+Inf is implied).
RUN_TIME_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
#: Upper bounds (seconds) of the queue-wait histogram's buckets (+Inf is implied).
QUEUE_WAIT_BUCKETS: tuple[float, ...] = RUN_TIME_BUCKETS
#: Upper bounds (seconds) of the journal commit histogram's buckets.
COMMIT_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

#: Upper bounds (seconds) of the heartbeat round-trip histogram's buckets.
HEARTBEAT_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)  # fmt: skip

#: The final statuses a task's outcome can have, in the order metrics list them.
STATUSES: tuple[str, ...] = (m.OK, m.ERROR, m.CANCELLED, m.TIMEOUT, m.LOST)


class Histogram:
    """Bucket counts (not cumulative; the last one is +Inf) and the sum of what was observed."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        """Count ``value`` (seconds) ``times`` times."""
        value = max(value, 0.0)  # (a wall clock that stepped back counts as no time at all)
        self.counts[bisect_left(self.bounds, value)] += times
        self.sum += value * times

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` for every bucket, ``inf`` last (Prometheus' ``le``)."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            total += count
            out.append((bound, total))
        return out


class NameStats:
    """What happened to the tasks of one name since the dispatcher started."""

    __slots__ = ("ended", "name", "queue_wait", "retried", "run_time", "started", "submitted")

    def __init__(self, name: str) -> None:
        self.name = name
        self.submitted = 0  # accepted (recovered tasks are not counted again)
        self.started = 0  # attempts a worker started
        self.retried = 0  # failed attempts that were retried
        self.ended: dict[str, int] = dict.fromkeys(STATUSES, 0)  # final outcomes by status
        self.run_time = Histogram(RUN_TIME_BUCKETS)  # per attempt a worker reported
        self.queue_wait = Histogram(QUEUE_WAIT_BUCKETS)  # per task, submission to its first start


def add_run(stats: NameStats, ok: int, quick: int, waits: int, waited: float) -> None:
    """Add what one Results frame did to a run of tasks of one name (``Scheduler.on_results`` counts in locals).

    ``ok``: outcomes ``ok`` (every other status is counted by ``Lifecycle.finish``);
    ``quick``: attempts that started and ended within one report (started, and
    run for 0 s as far as the dispatcher can tell); ``waits``: first starts that
    all waited ``waited`` seconds since their submission.
    """
    if ok:
        stats.ended[m.OK] += ok
    if quick:
        stats.started += quick
        stats.run_time.counts[0] += quick
    if waits:
        stats.queue_wait.observe(waited, waits)


#: Where tasks built outside a scheduler (tests that construct ``Task`` directly) count: read by nobody.
UNTRACKED = NameStats("")


class Metrics:
    """Every task name's :class:`NameStats`, created when the name is first seen (never removed).

    The set of names is what the dispatcher was asked to run, so it is as
    bounded as the tasks a deployment has; a client that submits random
    names grows it by one small record per name (and ``max_queued`` limits
    nothing here: operators who accept arbitrary names should know).
    """

    __slots__ = ("by_name",)

    def __init__(self) -> None:
        self.by_name: dict[str, NameStats] = {}

    def of(self, name: str) -> NameStats:
        stats = self.by_name.get(name)
        if stats is None:
            stats = self.by_name[name] = NameStats(name)
        return stats
