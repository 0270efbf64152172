"""Rebuilding the scheduler's state from a journal after a restart."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .._peer import Peer
from .._protocol import messages as m
from .._protocol.connection import WORKER
from .._store.base import StoredTask
from .sessions import WorkerSession
from .tasks import DELAYED, DONE, QUEUED, RUNNING, Task

if TYPE_CHECKING:
    from .scheduler import Scheduler

__all__ = ["recover", "row_of"]

log = logging.getLogger("trioschedule.dispatcher")


def recover(scheduler: Scheduler, stored: list[StoredTask], source: str) -> None:
    """Rebuild the live state from the journal's rows.

    Queued tasks are queued again (delayed ones keep their time).  A task
    that was running stays with its worker's session, detached: if the
    worker reconnects within ``session_grace`` and still holds it, it
    carries on and nothing runs twice; otherwise it is requeued with a loss
    counted.  Outcomes within ``result_ttl`` are kept for reattaching.
    """
    if not stored:
        return
    s = scheduler
    now, wall = s.clock(), s.wall_clock()
    cutoff = wall - s.limits.result_ttl
    expired: list[str] = []
    detached: dict[str, WorkerSession] = {}
    requeued = 0
    for row in stored:
        if row.state == DONE and (row.outcome is None or (row.finished_at or wall) < cutoff):
            expired.append(row.id)
            continue
        task = _task_of(s, row, now, wall)
        if row.state == DONE:
            _recover_outcome(s, task, row, now, wall)
            continue
        s.unfinished += 1
        if task.deadline is not None:
            s.timers.at(task.deadline, s.deadline_passed, task)
        if row.state == RUNNING and row.session:
            _recover_running(s, task, row.session, detached)
            continue
        if row.not_before is not None and row.not_before > wall:
            task.state = DELAYED
            task.not_before = row.not_before
            s.timers.at(now + row.not_before - wall, s.delay_over, task)
        else:
            s.placement.enqueue(task)
        if s.journaling:
            s.journal.changed(task)
        requeued += 1
    for session in detached.values():
        session.detached_at = now
        session.expiry += 1
        s.timers.at(now + s.limits.session_grace, s.expire_session_timer, (session, session.expiry))
    while len(s.finished) > s.limits.max_results:
        expired.append(s.finished.popleft().id)
        del s.tasks[expired[-1]]
    if expired and s.journaling:
        s.journal.forget(expired)
    log.info(
        "recovered from %s: %d task(s) queued, %d running on %d worker session(s) awaiting their worker, "
        "%d outcome(s) kept, %d expired",
        source, requeued, s.running, len(detached), len(s.finished), len(expired),
    )  # fmt: skip


def _task_of(s: Scheduler, row: StoredTask, now: float, wall: float) -> Task:
    deadline = None if row.deadline is None else now + (row.deadline - wall)
    task = Task(row.id, row.name, row.args, row.kwargs, row.priority, row.retries, deadline, None, s.next_seq(),
                row.submitted_at, s.metrics.of(row.name))  # fmt: skip
    task.attempt, task.failures, task.losses = row.attempt, row.failures, row.losses
    s.tasks[task.id] = task
    return task


def _recover_outcome(s: Scheduler, task: Task, row: StoredTask, now: float, wall: float) -> None:
    task.state = DONE
    task.outcome = m.converter.structure(row.outcome, m.Outcome)
    task.finished_at = row.finished_at or wall
    task.expires = now + s.limits.result_ttl - (wall - task.finished_at)
    task.args = task.kwargs = None  # type: ignore[assignment]
    s.finished.append(task)


def _recover_running(s: Scheduler, task: Task, session_id: str, detached: dict[str, WorkerSession]) -> None:
    session = detached.get(session_id)
    if session is None:
        peer = Peer(id=session_id, role=WORKER, name=f"worker of session {session_id[:8]}", address="", connected=False)
        session = detached[session_id] = WorkerSession(session_id, peer)
        peer.track_running(session.assigned)
        s.sessions[session_id] = session
    task.state = RUNNING
    task.session = session
    task.started = task.assumed = True  # it may well have been: count a loss unless its worker comes back
    session.assigned[task.id] = task
    s.running += 1


def row_of(task: Task, now: float, wall: float) -> StoredTask:
    """The journal's row for ``task`` as it is now: what :func:`recover` reads back.

    ``now``/``wall`` are the same instant on the scheduler's clock and the
    wall clock: deadlines are journaled on the wall clock, since the
    scheduler's clock does not survive a restart.  A delayed task is
    journaled as queued with its ``not_before``.
    """
    return StoredTask(
        id=task.id, name=task.name, args=task.args or [], kwargs=task.kwargs or {}, priority=task.priority,
        retries=task.retries, deadline=None if task.deadline is None else wall + (task.deadline - now),
        not_before=task.not_before, state=task.state if task.state != DELAYED else QUEUED,
        attempt=task.attempt, failures=task.failures, losses=task.losses,
        session=task.session.id if task.session else None,
        outcome=None if task.outcome is None else m.converter.unstructure(task.outcome),
        submitted_at=task.submitted_at, finished_at=task.finished_at or None,
    )  # fmt: skip
