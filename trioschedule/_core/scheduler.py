"""The scheduler: the task lifecycle driven by events from outside, with no I/O.

Every state change of every task happens in a method here or in
:class:`~trioschedule._core.lifecycle.Lifecycle`, synchronously, so there is
no await between reading a task's state and changing it.  The shell
(``trioschedule._dispatcher``) calls these methods when something happens and
then carries out what they left behind: :attr:`Scheduler.dirty_sessions` and
:attr:`Scheduler.dirty_clients` to send, :attr:`Scheduler.ended` for the
``on_task_done`` hook, :attr:`Scheduler.timers` to sleep on, and the
journal's operations.  The legal state changes are ``tasks.TRANSITIONS``.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .._errors import QueueFull, Rejected, RemoteProtocolError
from .._logging import context
from .._peer import Peer
from .._protocol import messages as m
from .._protocol.connection import WORKER
from .lifecycle import Lifecycle, Limits
from .metrics import NameStats, add_run
from .recovery import recover
from .sessions import ClientRecord, WorkerSession
from .tasks import DELAYED, DONE, NO_KWARGS, QUEUED, RUNNING, Task, check_options

if TYPE_CHECKING:
    from .._store.base import StoredTask

__all__ = ["Limits", "Scheduler"]

log = logging.getLogger("trioschedule.dispatcher")


class Scheduler(Lifecycle):
    """The scheduling core: what submissions, clients and workers make happen to tasks.

    Construct it as :class:`~trioschedule._core.lifecycle.Lifecycle`
    (``limits``, ``journal``, ``clock``, ``wall_clock``, ``rng``).
    """

    def recover(self, stored: list[StoredTask], source: str) -> None:
        """Rebuild the state from the journal's rows after a restart (see :func:`.recovery.recover`)."""
        recover(self, stored, source)

    # ================================================================ submissions
    def refusal(self, name: str) -> tuple[str, str] | None:
        """Why a task of ``name`` cannot be accepted now, as (code, message), or None."""
        if self.draining:
            return ("draining", "the dispatcher is shutting down and accepts no new tasks")
        if not name:
            return ("bad-request", "a task name must not be empty")
        return None

    @staticmethod
    def bad_id(task_id: str) -> tuple[str, str] | None:
        """Why a client's task id cannot be accepted, as (code, message), or None."""
        if not task_id:
            return ("bad-request", "a task id must not be empty")
        return None

    def new_task(self, task_id: str, name: str, args: Any, kwargs: Any, priority: int, retries: int | None,
                 timeout: float | None, delay: float | None, owner: ClientRecord | None) -> Task:  # fmt: skip
        """Record an accepted task (not yet queued: see :meth:`place`)."""
        deadline = self.clock() + timeout if timeout is not None else None
        self._seq += 1
        wall = self.wall_clock()
        stats = self.metrics.of(name)
        stats.submitted += 1
        task = Task(task_id, name, args, kwargs or NO_KWARGS, priority, retries, deadline, owner, self._seq, wall, stats)
        if delay:
            task.state = DELAYED
            task.not_before = wall + delay
        self.tasks[task_id] = task
        self.unfinished += 1
        return task

    def new_local_task(self, name: str, args: Iterable[Any], kwargs: dict[str, Any] | None, timeout: float | None,
                       retries: int | None, delay: float | None, priority: int, task_id: str | None) -> Task:  # fmt: skip
        """A task submitted inside the dispatcher's process: checked, recorded and placed.

        Raises :class:`Rejected` or :class:`QueueFull` instead of queuing.
        """
        problem = self.refusal(name)
        if problem is not None:
            raise Rejected(problem[1], code=problem[0])
        if self.unfinished >= self.limits.max_queued:
            raise QueueFull()
        check_options(timeout, retries, delay)
        task_id = task_id or self.ids.next()
        if task_id in self.tasks:
            raise Rejected(f"a task with id {task_id!r} exists already", code="duplicate")
        task = self.new_task(task_id, name, list(args), kwargs, priority, retries, timeout, delay, None)
        if delay or not self._assign_at_once(task):
            self.place(task, delay)
            self._journal(task)  # durable soon (group commit); submit() waits for it
            self.dispatch()
        return task

    def withdraw(self, task: Task) -> None:
        """Forget a task recorded by :meth:`new_task` that could not be journaled (it was refused)."""
        del self.tasks[task.id]
        self.unfinished -= 1
        if task.owner is not None:
            task.owner.owned -= 1

    def new_chunk(self, name: str, args_list: list[Any], priority: int, retries: int | None,
                  deadline: float | None) -> list[Task]:  # fmt: skip
        """The tasks of one ``map()`` chunk: the same options, ids from the dispatcher's sequence."""
        count = len(args_list)
        seq = self._seq + 1
        self._seq += count
        wall = self.wall_clock()
        stats = self.metrics.of(name)
        stats.submitted += count
        chunk = [
            Task(task_id, name, args, NO_KWARGS, priority, retries, deadline, None, seq + i, wall, stats)
            for i, (task_id, args) in enumerate(zip(self.ids.take(count), args_list))
        ]
        self.tasks.update([(task.id, task) for task in chunk])
        self.unfinished += count
        return chunk

    def place_chunk(self, name: str, chunk: list[Task], priority: int) -> None:
        """Queue a ``map()`` chunk (tasks cancelled meanwhile stay finished) and dispatch."""
        live = [task for task in chunk if task.state == QUEUED]
        if live and live[0].deadline is not None:
            for task in live:
                self.timers.at(task.deadline, self.deadline_passed, task)  # type: ignore[arg-type]
        self.placement.extend(name, live, priority)
        self.dispatch()

    def place(self, task: Task, delay: float | None) -> None:
        """Queue a newly accepted task, or hold it back for ``delay`` seconds."""
        if task.deadline is not None:
            self.timers.at(task.deadline, self.deadline_passed, task)
        if delay:
            self._delay(task, delay)
        else:
            self.placement.enqueue(task)

    def _assign_at_once(self, task: Task) -> bool:
        """Give a new task straight to the least loaded worker with room, if none of its name are queued.

        What queuing it and then dispatching would do, without the queue: a
        single ``submit()``/``call()`` is latency, and this is its path.
        """
        if self.draining or self.placement.has_queued(task.name):
            return False
        best = self.placement.least_loaded(task.name)
        if best is None:
            return False
        if task.deadline is not None:
            self.timers.at(task.deadline, self.deadline_passed, task)
        self._journal(task)  # as queued first: the journal's row for it
        self._assign([task], best)
        return True

    # ================================================================ clients
    def watch(self, task_id: str, client: ClientRecord) -> None:
        """``client`` wants the outcome of ``task_id`` (unknown ids are answered as such at once)."""
        task = self.tasks.get(task_id)
        if task is None:
            client.pending.append(m.Outcome(id=task_id, status=m.UNKNOWN))
            self.dirty_clients.add(client)
        else:
            self.watch_task(task, client)

    def watch_task(self, task: Task, client: ClientRecord) -> None:
        if task.outcome is not None:
            client.pending.append(task.outcome)
            self.dirty_clients.add(client)
        elif task.watchers is None:
            task.watchers = [client]
        elif client not in task.watchers:
            task.watchers.append(client)

    def cancel_owned(self, client: ClientRecord, reason: str) -> None:
        for task in list(self.tasks.values()):
            if task.owner is client and task.state != DONE:
                self.cancel(task.id, reason)

    def client_left(self, client: ClientRecord) -> None:
        self.dirty_clients.discard(client)

    # ================================================================ workers
    def attach_worker(self, conn: Any, hello: m.Hello, address: str) -> tuple[WorkerSession, bool]:
        """Attach a worker's connection to its session: a new one, or the one it resumes.

        A worker resumes its session (names it in its hello) when this
        dispatcher knows that session and it is not attached elsewhere: back
        within the grace window, or after the dispatcher restarted from a
        journal that named the session (see :mod:`.recovery`).  It keeps the tasks it still
        holds; those it no longer holds go back to the queue; held tasks the
        dispatcher had queued again (its journal lagged) are adopted, and
        held tasks that ended or run elsewhere are cancelled on the worker.
        """
        peer = Peer(
            id=uuid.uuid4().hex, role=WORKER, name=hello.name or f"{hello.role}-{hello.pid}", address=address,
            pid=hello.pid, host=hello.host, connected_at=self.wall_clock(), restarts=hello.restarts,
        )  # fmt: skip
        # Only a session this dispatcher knows can be resumed: an id it never
        # gave out (made up, or from before a restart without a journal, or
        # one whose grace ran out) is answered as a new session, so the worker
        # drops what it holds and the dispatcher never trusts a claimed id.
        session = self.sessions.get(hello.session) if hello.session else None
        resumed = session is not None and session.conn is None
        if session is None or not resumed:
            session = WorkerSession(uuid.uuid4().hex, peer)
            self.sessions[session.id] = session
        else:
            self._resume(session, peer, hello.running)
        session.names = peer.tasks = frozenset(hello.tasks)
        session.window = max(1, hello.concurrency + hello.prefetch)
        peer.concurrency = hello.concurrency
        peer.prefetch = hello.prefetch
        peer.track_running(session.assigned)
        session.retries = dict(hello.retries)
        session.no_retry = dict(hello.no_retry)
        session.retry_delay = dict(hello.retry_delay)
        session.retry_timeout = frozenset(hello.retry_timeout)
        session.conn = conn
        session.draining = False
        self.placement.offer(session)
        self.dispatch()
        self.steal_for(session)
        return session, resumed

    def _resume(self, session: WorkerSession, peer: Peer, held: dict[str, int]) -> None:
        for task in [t for t in session.assigned.values() if t.id not in held]:
            self._requeue(session, task, lost=task.started)
        peer.done, peer.failed = session.peer.done, session.peer.failed
        session.peer = peer
        session.detached_at = None
        session.expiry += 1
        for task_id, attempt in held.items():
            known = self.tasks.get(task_id)
            if known is not None and known.session is session:
                known.attempt = max(known.attempt, attempt)
            # Adopted only if the worker holds a later attempt than the one the dispatcher knows
            # of (its journal lagged).  The attempt it knows of was given up on (its session
            # expired, it was lost or released) or has ended (an error waiting for its retry):
            # the worker may hold only that attempt's report, which it resends, and which must
            # not be counted twice.
            elif known is not None and known.state in (QUEUED, DELAYED) and attempt > known.attempt:
                known.state, known.session, known.attempt, known.started = RUNNING, session, attempt, True
                known.assumed = True
                known.not_before = None
                session.assigned[known.id] = known
                self.running += 1
                self._journal(known)
            else:
                session.buffer_cancel.append(task_id)

    def detach_worker(self, session: WorkerSession, clean: bool) -> None:
        """The worker's connection ended; a clean goodbye or nothing assigned ends the session at once."""
        session.conn = None
        self.placement.withdraw(session)
        if clean or not session.assigned:
            self._expire_session(session, clean=clean)
        else:
            session.detached_at = self.clock()
            session.expiry += 1
            self.timers.at(self.clock() + self.limits.session_grace, self.expire_session_timer,
                           (session, session.expiry))  # fmt: skip

    def expire_session_timer(self, arg: tuple[WorkerSession, int]) -> None:
        session, expiry = arg
        if session.conn is None and session.expiry == expiry:
            self._expire_session(session)

    def _expire_session(self, session: WorkerSession, clean: bool = False) -> None:
        """The worker is gone for good: take its tasks back.

        A task counts a loss if the worker said it started it.  A worker can
        die before its "started" report leaves (a task that crashes it at
        once), so the oldest unreported tasks, up to the worker's
        concurrency, count as started too: a poison task cannot loop forever.
        A worker that said goodbye reported everything it started: what it
        holds unreported (placed on it as it stopped) never ran, and costs
        nothing.
        """
        self.sessions.pop(session.id, None)
        tasks = list(session.assigned.values())  # in assignment order
        unreported_slots = 0 if clean else max(0, session.peer.concurrency - sum(t.started for t in tasks))
        for task in tasks:
            lost = task.started
            if not lost and unreported_slots:
                lost, unreported_slots = True, unreported_slots - 1
            self._requeue(session, task, lost=lost)
        self.dispatch()

    def on_results(self, session: WorkerSession, results: m.Results) -> None:
        """A worker's Results frame: starts and outcomes of the attempts it holds.

        Raises :class:`RemoteProtocolError` (and changes nothing) for an
        attempt newer than the one sent: no correct worker can report that.
        """
        session.last_seq = max(session.last_seq, results.seq)
        assigned = session.assigned
        for outcome in results.results:  # before changing anything: a frame is taken whole or refused
            task = assigned.get(outcome.id)
            if task is not None and outcome.attempt > task.attempt:
                raise RemoteProtocolError(
                    f"results: task {outcome.id[:64]!r} reported as attempt {outcome.attempt}, but the dispatcher "
                    f"sent attempt {task.attempt}: copy attempt from the task's spec in run",
                    code="bad-message",
                )
        now, wall = self.clock(), self.wall_clock()
        for task_id in results.started:
            task = assigned.get(task_id)
            if task is not None:
                if not task.started or task.assumed:
                    self._started(task, now, wall)
                task.started, task.assumed = True, False
        self.forgetting_many()  # the map() tasks this frame ends, journaled as forgotten in one call
        try:
            self._outcomes(session, results, now, wall)
        finally:
            self.forgotten_many()
        self.dispatch()
        if len(session.assigned) < session.peer.concurrency:
            self.steal_for(session)

    def _outcomes(self, session: WorkerSession, results: m.Results, now: float, wall: float) -> None:
        """The outcomes of a results frame: each attempt the worker still holds ends, or fails and may retry."""
        assigned = session.assigned
        peer = session.peer
        # Metrics (metrics.py), counted per run of tasks of one name in this frame and added once per run:
        # for small tasks this loop is the hot path, and a map()'s tasks come in long runs.
        run: NameStats | None = None
        ok = quick = waits = 0  # in this run: ended ok, started and ended within one report, first starts
        submitted = 0.0  # the submission time of the ``waits`` (a map() chunk shares one)
        for outcome in results.results:
            task = assigned.get(outcome.id)
            if task is None or task.attempt != outcome.attempt:
                continue  # an earlier attempt, a frame sent again after a resume, a task gone elsewhere: harmless
            del assigned[outcome.id]
            self.running -= 1
            task.session = None
            stats = task.stats
            if stats is not run:
                if run is not None:
                    add_run(run, ok, quick, waits, wall - submitted)
                run, ok, quick, waits = stats, 0, 0, 0
            if task.started:  # its start was reported: the attempt's run time as the dispatcher saw it
                if not task.assumed:  # (an assumed start has no time)
                    stats.run_time.observe(now - task.started_at)
            else:  # it ended before the worker's report of its start could leave: started and ended now (0 s)
                quick += 1
                if task.started_at < 0.0:  # its first start: how long it waited since it was submitted
                    if task.submitted_at != submitted and waits:
                        add_run(stats, 0, 0, waits, wall - submitted)
                        waits = 0
                    submitted = task.submitted_at
                    waits += 1
            if outcome.status == m.OK:
                ok += 1
                peer.done += 1
                self.finish(task, outcome, now, wall)
            else:
                peer.failed += 1
                if not task.started:
                    task.started_at = now  # (an ok task is done with it: only one that may run again needs it)
                self._attempt_failed(session, task, outcome)
        if run is not None:
            add_run(run, ok, quick, waits, wall - submitted)

    @staticmethod
    def _started(task: Task, now: float, wall: float) -> None:
        """Count an attempt's start; a task's first start observes how long it waited since it was submitted."""
        stats = task.stats
        stats.started += 1
        if task.started_at < 0.0:
            stats.queue_wait.observe(wall - task.submitted_at)
        task.started_at = now

    def on_release(self, session: WorkerSession, release: m.Release) -> None:
        """The worker hands back tasks it has not started (it is stopping, or was asked to).

        A task the worker itself reported started is not taken back (it may be
        running: giving it to another worker would run it twice).  One marked
        started only as a guess (recovered from the journal, or adopted when
        the worker resumed) is: the worker knows it never started it.
        """
        if release.stopping:
            session.draining = True
        for task_id in release.ids:
            task = session.assigned.get(task_id)
            if task is not None and (not task.started or task.assumed):
                self._requeue(session, task, lost=False)
        self.dispatch()

    def steal_for(self, hungry: WorkerSession) -> None:
        """Ask another worker to hand back prefetched tasks that ``hungry``'s idle runners could start now."""
        idle = hungry.peer.concurrency - len(hungry.assigned)
        if idle <= 0 or hungry.draining or hungry.conn is None or self.running == len(hungry.assigned):
            return  # (the last: no other worker holds anything to hand over)
        plan = self.placement.steal_for(hungry)
        if plan is None:
            return
        donor, take = plan
        for task in take:
            task.reclaiming = True
        self._control(donor, m.Reclaim(ids=tuple(t.id for t in take)))

    def _attempt_failed(self, session: WorkerSession, task: Task, outcome: m.Outcome) -> None:
        if outcome.status == m.CANCELLED and task.cancel_reason is None:
            # Nobody asked: the worker gave the task up (it was stopping). Run it elsewhere.
            self._return_to_queue(task, lost=True)
            return
        if task.cancel_reason is None and not self.draining and self._retriable(session, task, outcome):
            limit = task.retries if task.retries is not None else session.retries.get(task.name, 0)
            error = outcome.error
            error_type = error.type if error is not None else ""
            if task.failures < limit and error_type not in session.no_retry.get(task.name, ()):
                task.failures += 1
                task.stats.retried += 1
                delay = self._retry_delay(session, task, error)
                log.info("task %s (%s) %s; retry %d/%d in %.2f s", task.id, task.name,
                         f"failed with {error_type}" if error is not None else "ran past its time limit",
                         task.failures, limit, delay, extra=context(task_id=task.id, task_name=task.name))  # fmt: skip
                self._delay(task, delay)
                self._journal(task)
                return
        if task.cancel_reason is not None and outcome.status in (m.CANCELLED, m.ERROR):
            outcome = m.Outcome(id=task.id, status=m.CANCELLED, attempt=outcome.attempt, reason=task.cancel_reason)
        self.finish(task, outcome)

    def _retriable(self, session: WorkerSession, task: Task, outcome: m.Outcome) -> bool:
        """An error is; a timeout only for a task that opted in, and only while its deadline is ahead.

        A timeout the worker reports is either the task's deadline (nothing
        left to retry in) or its per-attempt ``time_limit``; the dispatcher
        cannot tell them apart from the outcome, and need not: a deadline
        still ahead means it was the time limit.
        """
        if outcome.status == m.ERROR:
            return True
        return (
            outcome.status == m.TIMEOUT and task.name in session.retry_timeout
            and (task.deadline is None or self.clock() < task.deadline)
        )  # fmt: skip

    def _retry_delay(self, session: WorkerSession, task: Task, error: m.RemoteError | None) -> float:
        """What the task asked for (``Retry(after=...)``, then its ``retry_delay``), exactly; else the backoff.

        An asked-for delay has no jitter: the task named a time (a rate
        limit's reset, say), and waking early would only fail again.
        """
        asked = error.retry_after if error is not None else None
        if asked is None or not math.isfinite(asked):
            asked = session.retry_delay.get(task.name)
        if asked is not None and math.isfinite(asked):
            return max(0.0, asked)
        backoff = min(self.limits.retry_backoff_max, self.limits.retry_backoff * 2 ** (task.failures - 1))
        return self.rng.uniform(backoff / 2, backoff)  # "equal jitter": never retry at once

    def unsendable(self, session: WorkerSession, task_id: str, attempt: int, exc: Exception) -> None:
        """A task's spec could not be encoded into a frame: it ends with an error instead of vanishing."""
        task = session.assigned.get(task_id)
        if task is not None and task.attempt == attempt:
            error = m.RemoteError(type="EncodingError", message=f"the task cannot be sent to a worker: {exc}")
            self.finish(task, m.Outcome(id=task.id, status=m.ERROR, attempt=task.attempt, error=error))
