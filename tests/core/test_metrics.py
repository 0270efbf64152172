"""The core's per-name counters and histograms (``_core/metrics.py``), driven by hand with a fake clock.

They are counted on the hot path in bulk (``Scheduler.on_results`` adds a
frame's run of one name at once), so these tests mix names, starts reported
or not, retries, losses, cancels and deadlines within frames and check every
number against what happened.
"""

from __future__ import annotations

import pytest

from trioschedule._core.metrics import Histogram
from trioschedule._protocol import messages as m

from .helpers import FakeClock, advance, error, make_scheduler, ok, results
from .test_scheduler import attach, submit


def _ended(core, name):
    return core.metrics.by_name[name].ended


def test_counts_and_histograms_follow_each_task():
    clock = FakeClock()
    core = make_scheduler(clock, retry_backoff=1.0, retry_backoff_max=1.0)
    session = attach(core, "a", "b", concurrency=10)
    quick = [submit(core, "a") for _ in range(3)]  # waited 2 s, then ended within one report
    slow = submit(core, "b")
    clock.now += 2.0
    core.on_results(session, results(1, started=(slow.id,)))  # b's start reported: it waited 2 s
    clock.now += 0.3
    retried = submit(core, "a", retries=1)
    core.on_results(session, results(2, *(ok(t.id) for t in quick), ok(slow.id), error(retried.id)))
    advance(core, clock, 1.5)  # the retry's backoff is over: it runs again
    core.on_results(session, results(3, ok(retried.id, attempt=2)))

    a, b = core.metrics.by_name["a"], core.metrics.by_name["b"]
    assert (a.submitted, a.started, a.retried) == (4, 5, 1)  # the retried task started twice
    assert (b.submitted, b.started, b.retried) == (1, 1, 0)
    assert a.ended[m.OK] == 4 and a.ended[m.ERROR] == 0 and b.ended[m.OK] == 1
    assert sum(core.counts.values()) == sum(sum(s.ended.values()) for s in core.metrics.by_name.values()) == 5
    # Run time: b measured from its reported start (0.3 s); a's four attempts ended unreported (0 s).
    assert b.run_time.count == 1 and b.run_time.sum == pytest.approx(0.3)
    assert a.run_time.count == 5 and a.run_time.counts[0] == 5 and a.run_time.sum == 0
    # Queue wait: once per task, at its first start (the retry does not wait again).
    assert a.queue_wait.count == 4 and b.queue_wait.count == 1
    assert a.queue_wait.sum == pytest.approx(3 * 2.3 + 0.0) and b.queue_wait.sum == pytest.approx(2.0)
    assert dict(a.queue_wait.cumulative())[2.5] == 4 and dict(a.queue_wait.cumulative())[1.0] == 1


def test_final_failures_losses_cancels_and_timeouts_are_counted_by_name():
    clock = FakeClock()
    core = make_scheduler(clock, max_losses=0)
    failing = submit(core, "f")
    doomed = submit(core, "f", timeout=1.0)
    cancelled = submit(core, "f")
    session = attach(core, "f", concurrency=1)  # takes `failing` only
    core.cancel(cancelled.id)
    core.on_results(session, results(1, error(failing.id)))
    assert doomed.state == "running"
    core.on_results(session, results(2, started=(doomed.id,)))
    core.detach_worker(session, clean=False)
    advance(core, clock, 100)  # the session's grace runs out: a started task lost once, max_losses 0
    ended = _ended(core, "f")
    assert ended[m.ERROR] == 1 and ended[m.CANCELLED] == 1 and ended[m.LOST] == 1 and ended[m.OK] == 0
    late = submit(core, "g", timeout=1.0)
    advance(core, clock, 2)
    assert late.outcome.status == m.TIMEOUT and _ended(core, "g")[m.TIMEOUT] == 1
    assert core.metrics.by_name["f"].started == 2
    assert core.counts == {status: sum(s.ended[status] for s in core.metrics.by_name.values()) for status in core.counts}


def test_histogram_buckets_are_prometheus_le():
    h = Histogram((0.1, 1.0))
    for value in (0.1, 0.5, 1.0, 7.0, -3.0):  # a bound belongs to its bucket; a negative time counts as 0
        h.observe(value)
    h.observe(0.2, times=3)
    assert h.counts == [2, 5, 1] and h.count == 8
    assert h.cumulative() == [(0.1, 2), (1.0, 7), (float("inf"), 8)]
    assert h.sum == pytest.approx(0.1 + 0.5 + 1.0 + 7.0 + 0.6)
