"""Placement: least loaded first, only connected sessions with room, and work stealing."""

from __future__ import annotations

from trioschedule._core.placement import Placement
from trioschedule._core.sessions import WorkerSession
from trioschedule._core.tasks import RUNNING, Task
from trioschedule._peer import Peer


def _session(name: str, *tasks: str, concurrency: int = 1, prefetch: int = 0) -> WorkerSession:
    peer = Peer(id=name, role="worker", name=name, address="", concurrency=concurrency, prefetch=prefetch)
    session = WorkerSession(name, peer, frozenset(tasks), window=concurrency + prefetch)
    session.conn = object()
    return session


def _task(n: int, name: str = "t", priority: int = 0) -> Task:
    return Task(f"{name}-{n}", name, [], {}, priority, None, None, None, n, 0.0)


def _assign(tasks: list[Task], session: WorkerSession) -> None:
    """What Scheduler._assign records (the decisions only)."""
    for task in tasks:
        task.state = RUNNING
        task.session = session
        session.assigned[task.id] = task


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(self, tasks: list[Task], session: WorkerSession) -> None:
        self.calls.append((session.id, [t.id for t in tasks]))
        _assign(tasks, session)


def test_least_loaded_is_the_connected_session_with_the_most_room():
    placement = Placement()
    busy, idle, gone = _session("busy", "t", concurrency=2), _session("idle", "t", concurrency=4), _session("gone", "t")
    for session in (busy, idle, gone):
        placement.offer(session)
    gone.conn = None
    _assign([_task(1)], busy)  # 1/2 loaded
    _assign([_task(2)], idle)  # 1/4 loaded
    assert placement.least_loaded("t") is idle
    _assign([_task(3), _task(4), _task(5)], idle)  # full
    assert placement.least_loaded("t") is busy
    busy.draining = True
    assert placement.least_loaded("t") is None
    assert placement.least_loaded("other") is None


def test_dispatch_spreads_tasks_so_that_loads_stay_level():
    placement = Placement()
    small, large = _session("small", "t", concurrency=2), _session("large", "t", concurrency=4)
    placement.offer(small)
    placement.offer(large)
    for n in range(4):
        placement.enqueue(_task(n))
    assign = Recorder()
    placement.dispatch(assign)
    loads = {s.id: len(s.assigned) / s.window for s in (small, large)}
    assert len(small.assigned) + len(large.assigned) == 4
    assert abs(loads["small"] - loads["large"]) <= 0.5, loads
    # Everything else queued stays queued until there is room.
    for n in range(4, 10):
        placement.enqueue(_task(n))
    placement.dispatch(assign)
    assert len(small.assigned) == 2 and len(large.assigned) == 4
    assert placement.has_queued("t") and "t" in placement.ready


def test_dispatch_skips_disconnected_draining_and_unoffered():
    placement = Placement()
    gone, draining, other = _session("gone", "t"), _session("draining", "t"), _session("other", "u")
    for session in (gone, draining, other):
        placement.offer(session)
    gone.conn = None
    draining.draining = True
    placement.enqueue(_task(1))
    assign = Recorder()
    placement.dispatch(assign)
    assert assign.calls == []
    assert placement.has_queued("t") and placement.offered() == {"t", "u"}
    assert placement.capacity("t") == 1  # the draining one still counts as connected


def test_dispatch_serves_names_in_the_order_of_their_next_task():
    placement = Placement()
    both = _session("both", "a", "b", concurrency=1)
    placement.offer(both)
    placement.enqueue(_task(1, "a", priority=0))
    placement.enqueue(_task(2, "b", priority=3))
    assign = Recorder()
    placement.dispatch(assign)
    assert assign.calls == [("both", ["b-2"])]


def test_withdraw_stops_offering():
    placement = Placement()
    session = _session("s", "t")
    placement.offer(session)
    placement.withdraw(session)
    placement.enqueue(_task(1))
    assign = Recorder()
    placement.dispatch(assign)
    assert assign.calls == [] and placement.capacity("t") == 0


def test_steal_for_takes_the_newest_unstarted_tasks_of_the_busiest_donor():
    placement = Placement()
    donor = _session("donor", "t", concurrency=1, prefetch=4)
    small = _session("small", "t", concurrency=1, prefetch=1)
    hungry = _session("hungry", "t", concurrency=2)
    for session in (donor, small, hungry):
        placement.offer(session)
    tasks = [_task(n) for n in range(5)]
    _assign(tasks, donor)
    tasks[0].started = True
    tasks[3].started = True  # (the worker runs one and prefetches the others: started out of order)
    tasks[4].reclaiming = True  # asked back already
    small_tasks = [_task(10), _task(11)]
    _assign(small_tasks, small)
    small_tasks[0].started = True  # one spare there, two on donor
    plan = placement.steal_for(hungry)
    assert plan is not None
    source, take = plan
    assert source is donor
    assert [t.id for t in take] == ["t-1", "t-2"]  # as many as hungry can start now, newest unstarted first
    # Nothing to steal when the queue can feed it, or when nobody holds more than it runs.
    placement.enqueue(_task(20))
    assert placement.steal_for(hungry) is None


def test_steal_for_ignores_donors_that_run_everything_they_hold():
    placement = Placement()
    donor = _session("donor", "t", concurrency=2, prefetch=0)
    hungry = _session("hungry", "t", concurrency=1)
    placement.offer(donor)
    placement.offer(hungry)
    _assign([_task(1), _task(2)], donor)
    assert placement.steal_for(hungry) is None
    gone = _session("gone", "t", concurrency=1, prefetch=3)
    placement.offer(gone)
    _assign([_task(3), _task(4), _task(5)], gone)
    gone.conn = None
    assert placement.steal_for(hungry) is None
