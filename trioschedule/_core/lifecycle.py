"""What can happen to a task, whatever caused it: the lifecycle half of the scheduler.

:class:`Lifecycle` holds the state (task records, placement, timers, counts,
what the shell must carry out) and every transition of ``tasks.TRANSITIONS``:
assigning, requeuing, delaying, deadlines, cancelling, finishing and
forgetting.  :class:`~trioschedule._core.scheduler.Scheduler` adds the events
from outside (submissions, clients, workers, recovery) on top.  No I/O here.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable
from typing import Any

from .._logging import context
from .._protocol import messages as m
from .history import History
from .journal import Journal
from .metrics import Metrics
from .placement import Placement
from .sessions import ClientRecord, WorkerSession
from .tasks import DELAYED, DONE, QUEUED, RUNNING, IdSequence, Task
from .timers import Timers

__all__ = ["Lifecycle", "Limits"]

log = logging.getLogger("trioschedule.dispatcher")
OK_STATUS = m.OK


class Limits:
    """The scheduler's settings (the dispatcher's constructor arguments of the same names)."""

    __slots__ = (
        "cancel_timeout",
        "heartbeat_timeout",
        "history",
        "max_client_queued",
        "max_losses",
        "max_queued",
        "max_results",
        "result_ttl",
        "retry_backoff",
        "retry_backoff_max",
        "session_grace",
    )  # fmt: skip

    def __init__(self, *, max_queued: int, max_client_queued: int, max_losses: int, retry_backoff: float,
                 retry_backoff_max: float, heartbeat_timeout: float, cancel_timeout: float, session_grace: float,
                 result_ttl: float, max_results: int, history: int = 0) -> None:  # fmt: skip
        self.max_queued = max_queued
        self.max_client_queued = max_client_queued
        self.max_losses = max_losses
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.heartbeat_timeout = heartbeat_timeout  # how long a running task may outlive its deadline unreported
        self.cancel_timeout = cancel_timeout
        self.session_grace = session_grace
        self.result_ttl = result_ttl
        self.max_results = max_results
        self.history = history  # ended tasks kept for operators (0: none)


class Lifecycle:
    """Owns every task record, the queues, the worker sessions' assignments, deadlines and timers.

    ``clock`` is a monotonic clock in seconds (the shell passes trio's, so
    tests run in virtual time), ``wall_clock`` gives ``time.time()``-style
    timestamps for what is journaled or shown, and ``rng`` draws retry jitter.
    """

    def __init__(self, limits: Limits, journal: Journal, *, clock: Callable[[], float],
                 wall_clock: Callable[[], float], rng: random.Random | None = None) -> None:  # fmt: skip
        self.limits = limits
        self.journal = journal
        self.clock = clock
        self.wall_clock = wall_clock
        self.rng = rng or random.Random()
        self._quiet = False  # lose_unfinished logs one line for all
        self.tasks: dict[str, Task] = {}
        self.placement = Placement()
        self.sessions: dict[str, WorkerSession] = {}
        self.timers = Timers()
        self.finished: deque[Task] = deque()  # ended tasks kept for reattaching, oldest first
        self.history = History(limits.history)  # the last N outcomes, for operators
        self._history = self.history.entries.append if limits.history > 0 else None
        self.metrics = Metrics()  # per task name: counters and histograms, read at scrape time
        self.ids = IdSequence(12)  # task ids unique to this dispatcher instance
        self.unfinished = 0
        self.running = 0
        self.counts = {m.OK: 0, m.ERROR: 0, m.CANCELLED: 0, m.TIMEOUT: 0, m.LOST: 0}
        self.draining = False
        # What the shell carries out after each call:
        self.dirty_sessions: set[WorkerSession] = set()  # have a buffer or control messages to send
        self.dirty_clients: set[ClientRecord] = set()  # have outcomes to send
        self.report_ended = False  # collect ``ended`` (the shell sets it if on_task_done is overridden)
        self.ended: list[tuple[str, str, m.Outcome]] = []
        self._seq = 0
        self._journaling = journal.active
        self._forgetting: list[str] | None = None  # ids to journal as forgotten at once (see forgetting_many)

    def journal_opened(self, active: bool) -> None:
        """The journal became (in)active; tasks accepted before it opened are journaled whole now."""
        self._journaling = active and self.journal.active
        if self._journaling:
            for task in list(self.tasks.values()):
                self.journal.changed(task)

    @property
    def journaling(self) -> bool:
        return self._journaling

    def next_seq(self) -> int:
        """The next submission order number (orders tasks of equal priority)."""
        self._seq += 1
        return self._seq

    # ================================================================ lifecycle
    def _requeue(self, session: WorkerSession, task: Task, *, lost: bool) -> None:
        """Take ``task`` back from ``session``; a started attempt counts as lost."""
        del session.assigned[task.id]
        self.running -= 1
        self._return_to_queue(task, lost=lost)

    def _return_to_queue(self, task: Task, *, lost: bool) -> None:
        task.session = None
        task.started = task.assumed = False
        task.reclaiming = False
        if task.cancel_reason is not None:
            self.finish(task, m.Outcome(id=task.id, status=m.CANCELLED, attempt=task.attempt, reason=task.cancel_reason))
            return
        if lost:
            task.losses += 1
            if task.losses > self.limits.max_losses:
                reason = f"the task's worker was lost {task.losses} times (limit {self.limits.max_losses})"
                self.finish(task, m.Outcome(id=task.id, status=m.LOST, attempt=task.attempt, reason=reason))
                return
        # A delivery that never started costs nothing: only losses and failures are limited.
        self.placement.enqueue(task, front=True)  # it waited its turn once already
        self._journal(task)

    def _delay(self, task: Task, delay: float) -> None:
        task.state = DELAYED
        task.not_before = self.wall_clock() + delay
        self.timers.at(self.clock() + delay, self.delay_over, task)

    def delay_over(self, task: Task) -> None:
        if task.state == DELAYED:
            task.not_before = None
            self.placement.enqueue(task)
            self.dispatch()

    def deadline_passed(self, task: Task) -> None:
        if task.state == DONE:
            return
        if task.state == RUNNING:
            # The worker enforces the deadline itself and will report; if it has
            # gone quiet, the dispatcher gives it up shortly after.
            self.timers.at(self.clock() + self.limits.heartbeat_timeout, self._deadline_enforced, task)
            return
        self.finish(task, m.Outcome(id=task.id, status=m.TIMEOUT, attempt=task.attempt, reason="deadline passed while queued"))

    def _deadline_enforced(self, task: Task) -> None:
        session = task.session
        if task.state == RUNNING and session is not None:
            del session.assigned[task.id]
            self.running -= 1
            if session.conn is not None:
                self._control(session, m.Cancel(id=task.id, reason="deadline passed"))
            task.session = None
            reason = "deadline passed; the worker did not report in time"
            self.finish(task, m.Outcome(id=task.id, status=m.TIMEOUT, attempt=task.attempt, reason=reason))
            self.dispatch()

    def cancel(self, task_id: str, reason: str | None = None) -> bool:
        """Cancel a task: at once if queued, over the wire if running.  False if unknown or ended."""
        task = self.tasks.get(task_id)
        if task is None or task.state == DONE:
            return False
        reason = reason or "cancelled"
        session = task.session
        if task.state == RUNNING and session is not None and session.conn is not None:
            if task.cancel_reason is None:
                task.cancel_reason = reason
                self._control(session, m.Cancel(id=task.id, reason=reason))
                self.timers.at(self.clock() + self.limits.cancel_timeout, self._cancel_unacknowledged, task)
            return True
        self.finish(task, m.Outcome(id=task.id, status=m.CANCELLED, attempt=task.attempt, reason=reason))
        self.dispatch()
        return True

    def _cancel_unacknowledged(self, task: Task) -> None:
        if task.state == RUNNING and task.cancel_reason is not None:
            log.warning("task %s (%s): the worker did not acknowledge its cancellation in time", task.id, task.name,
                        extra=context(task_id=task.id, task_name=task.name, peer=task.worker))  # fmt: skip
            self.finish(task, m.Outcome(id=task.id, status=m.CANCELLED, attempt=task.attempt, reason=task.cancel_reason))
            self.dispatch()

    def lose_unfinished(self, reason: str) -> None:
        """Without a journal, a stopping dispatcher ends every unfinished task as lost (one log line for all)."""
        unfinished = [task for task in self.tasks.values() if task.state != DONE]
        if unfinished:
            log.warning("%d unfinished task(s) lost: %s", len(unfinished), reason)
        self._quiet = True  # not one line per task
        try:
            for task in unfinished:
                self.finish(task, m.Outcome(id=task.id, status=m.LOST, attempt=task.attempt, reason=reason))
        finally:
            self._quiet = False

    def dispatch(self) -> None:
        """Give queued tasks to workers that offer them and have room, least loaded first."""
        if self.placement.ready and not self.draining:
            self.placement.dispatch(self._assign)

    def _assign(self, tasks: list[Task], session: WorkerSession) -> None:
        """Hand ``tasks`` to ``session``: they go out in its next Run frame."""
        assigned, buffer, journaling = session.assigned, session.buffer, self._journaling
        spec_payload = m.spec_payload
        now = self.clock()
        worker = session.peer.name
        first: list[str] | None = [] if journaling and self.journal.bulk_starts else None  # journaled as one
        for task in tasks:
            task.state = RUNNING
            attempt = task.attempt = task.attempt + 1
            task.session = session
            task.worker = worker
            task.started = False
            assigned[task.id] = task
            deadline = task.deadline
            buffer.append(spec_payload(task.id, task.name, task.args, task.kwargs, attempt,
                                       None if deadline is None else max(0.0, deadline - now)))  # fmt: skip
            if journaling:
                if first is not None and attempt == 1 and not task.failures and not task.losses:
                    first.append(task.id)
                else:
                    self.journal.changed(task)
        if first:
            self.journal.started_first(first, session.id)
        self.running += len(tasks)
        self.dirty_sessions.add(session)

    def finish(self, task: Task, outcome: m.Outcome, now: float | None = None, wall: float | None = None) -> None:
        """Record the one outcome of ``task`` and tell everyone who waits for it.

        ``now`` and ``wall`` (both clocks) may be passed in by a caller that
        finishes many tasks at once.
        """
        if task.state == DONE:
            return
        if task.state == RUNNING and task.session is not None:
            task.session.assigned.pop(task.id, None)
            self.running -= 1
            task.session = None
        task.state = DONE
        task.outcome = outcome
        finished_at = task.finished_at = self.wall_clock() if wall is None else wall
        task.expires = (self.clock() if now is None else now) + self.limits.result_ttl
        self.unfinished -= 1
        status = outcome.status
        counts = self.counts
        counts[status] = counts.get(status, 0) + 1
        if status != OK_STATUS:  # (an ok outcome comes from Scheduler.on_results, which counts its name's in bulk)
            counts = task.stats.ended
            counts[status] = counts.get(status, 0) + 1
            if not self._quiet:  # one line for every task that did not succeed (off the ok path)
                _log_ended(task, outcome)
        if task.owner is not None:
            task.owner.owned -= 1
        if self._history is not None:
            # A plain tuple in Ended's field order: half the cost of calling Ended().
            self._history((task.id, task.name, task.args, task.kwargs, task.worker, outcome.status,
                           outcome.attempt or task.attempt, outcome.error, outcome.reason,
                           task.submitted_at, finished_at))  # fmt: skip
        task.args = task.kwargs = None  # type: ignore[assignment]  # not needed any more
        # A map() task nobody else looked up goes with its outcome to map() alone:
        # its id was never handed out, so it is not kept for reattaching (and a
        # large map() does not push everyone else's outcomes out of max_results).
        private = task.batch is not None and task.slot is None and not task.watchers
        if task.slot is not None:
            task.slot.set(outcome)
        if task.batch is not None:
            task.batch.one_done(task.batch_index, outcome)
            task.batch = None
        if task.watchers:
            for client in task.watchers:
                client.pending.append(outcome)
                self.dirty_clients.add(client)
            task.watchers = None
        if private:
            self._forget(task)  # journaled as forgotten: its outcome is never needed again
        else:
            finished = self.finished
            finished.append(task)
            if len(finished) > self.limits.max_results:
                self._forget(finished.popleft())
            if self._journaling:
                self.journal.changed(task)
        if self.report_ended:
            self.ended.append((task.id, task.name, outcome))
        if task.schedule is not None:
            task.schedule.run_ended(task, outcome)

    def _forget(self, task: Task) -> None:
        if self.tasks.get(task.id) is task:
            del self.tasks[task.id]
            if self._journaling:
                if self._forgetting is None:
                    self.journal.forget([task.id])
                else:
                    self._forgetting.append(task.id)

    def forgetting_many(self) -> None:
        """Collect the tasks forgotten from now on, to journal them as one call in :meth:`forgotten_many`.

        A worker's results frame ends a ``map()`` chunk's tasks by the
        hundred, each forgotten as it ends: one journal call for all of them
        costs the journal (and its writer's fold) one operation, not hundreds.
        Nothing else may be journaled about those tasks in between (they are
        gone), so only a synchronous stretch of code does this.
        """
        self._forgetting = []

    def forgotten_many(self) -> None:
        """Journal what was forgotten since :meth:`forgetting_many`, in one call, and stop collecting."""
        forgotten, self._forgetting = self._forgetting, None
        if forgotten:
            self.journal.forget(forgotten)

    def start_purging(self) -> None:
        """Begin forgetting outcomes older than ``result_ttl`` (checked every minute at most)."""
        self.timers.at(self.clock() + min(60.0, self.limits.result_ttl), self.purge, None)

    def purge(self, _: Any = None) -> None:
        """Forget outcomes older than ``result_ttl``; runs every minute at most."""
        now = self.clock()
        finished = self.finished
        while finished and finished[0].expires <= now:
            self._forget(finished.popleft())
        self.timers.at(now + min(60.0, self.limits.result_ttl), self.purge, None)

    def _journal(self, task: Task) -> None:
        if self._journaling:
            self.journal.changed(task)

    def _control(self, session: WorkerSession, message: Any) -> None:
        """Queue a message other than Run for ``session``'s worker (dropped if it is not connected)."""
        if session.conn is not None:
            session.control.append(message)
            self.dirty_sessions.add(session)

    # ================================================================ reading
    def queued_counts(self) -> tuple[int, int, dict[str, int]]:
        """(queued, delayed, queued tasks of names no connected worker offers, by name)."""
        queued = delayed = 0
        waiting: dict[str, int] = {}
        offered = self.placement.offered()
        for task in self.tasks.values():
            if task.state == QUEUED:
                queued += 1
                if task.name not in offered:
                    waiting[task.name] = waiting.get(task.name, 0) + 1
            elif task.state == DELAYED:
                delayed += 1
        return queued, delayed, waiting

    def queue_depths(self) -> dict[str, dict[str, int]]:
        """Per task name: ``queued``, ``delayed``, ``running`` and ``waiting_for_worker`` (queued, and no
        connected worker offers the name).  Walks the task table: for operators' pages, not the hot path."""
        offered = self.placement.offered()
        depths: dict[str, dict[str, int]] = {}
        for task in self.tasks.values():
            state = task.state
            if state == DONE:
                continue
            counts = depths.get(task.name)
            if counts is None:
                counts = depths[task.name] = {"queued": 0, "delayed": 0, "running": 0, "waiting_for_worker": 0}
            counts[state] += 1
            if state == QUEUED and task.name not in offered:
                counts["waiting_for_worker"] += 1
        return depths

    def map_window(self, name: str, minimum: int, chunk: int) -> int:
        """How many unfinished tasks one ``map()`` may have: twice what the workers offering ``name`` hold, or more."""
        return max(minimum, 2 * self.placement.capacity(name) + chunk)


def _log_ended(task: Task, outcome: m.Outcome) -> None:
    """The one log line of a task that ended other than ok: failed, timed out and lost warn.

    A cancellation was asked for (and a client that leaves may cancel
    thousands at once): it is a DEBUG line.
    """
    level = logging.DEBUG if outcome.status == m.CANCELLED else logging.WARNING
    if not log.isEnabledFor(level):
        return
    error = outcome.error
    why = f"{error.type}: {error.message}" if error is not None else (outcome.reason or "")
    attempts = outcome.attempt or task.attempt
    log.log(level, "task %s (%s) ended %s after %d attempt(s)%s%s", task.id, task.name, outcome.status, attempts,
            f" on {task.worker!r}" if task.worker else "", f": {why}" if why else "",
            extra=context(task_id=task.id, task_name=task.name, peer=task.worker))  # fmt: skip
