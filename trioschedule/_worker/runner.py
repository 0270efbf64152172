"""The half of a worker that runs tasks: what arrives, the runners, and the Results that go back.

:class:`TaskRunner` is :class:`~trioschedule.Worker`'s base class; the Worker
adds the connection's life (connect, resume a session, heartbeats, drain) and
the public API.  They share one set of attributes, not an object between
them, because this is the hot path: a small task's arrival, run and report
cost microseconds, and every attribute hop per task shows.
"""

from __future__ import annotations

import functools
import logging
import os
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .._errors import ConnectionClosed, LocalProtocolError
from .._hooks import HookRunner
from .._net.connection import Connection
from .._net.splitting import send_split
from .._protocol import messages as m
from .._protocol.framing import encode_frame
from .._task import Retry, TaskOptions
from .readturn import UNCLAIMED, ReadTurn, resume

__all__ = ["Running", "TaskRunner", "describe_exception", "encodable"]

log = logging.getLogger("trioschedule.worker")


class Running:
    """A task that a runner has taken from the queue."""

    __slots__ = ("cancel_reason", "scope", "spec")

    def __init__(self, spec: m.TaskSpec, scope: trio.CancelScope) -> None:
        self.spec = spec
        self.scope = scope  # the runner's, or the task's own if it has a deadline
        self.cancel_reason: str | None = None


class TaskRunner:
    """Runs the tasks the dispatcher sends and reports how each ended; the base of :class:`~trioschedule.Worker`.

    ``concurrency`` runners (:meth:`_runner`) take tasks from one queue.
    Outcomes are gathered into one Results frame per report, each kept until
    the dispatcher acknowledges it, so a broken connection loses nothing.
    The subclass sets ``_conn`` and ``_turn`` while connected, and provides
    ``tasks``, ``max_frame_size``, ``_hooks`` and the ``on_message`` hook.
    """

    tasks: dict[str, tuple[Any, TaskOptions]]
    max_frame_size: int
    _hooks: HookRunner
    on_message: Callable[[Any], Awaitable[None]]

    def __init__(self) -> None:
        self._queue: deque[m.TaskSpec] = deque()
        self._running: dict[str, Running] = {}
        # Started since the last report and still running (a result says it started).
        self._started: dict[str, None] = {}
        self._results: list[m.Outcome] = []
        self._unacked: deque[m.Results] = deque()
        self._seq = 0
        self._conn: Connection | None = None
        self._turn: ReadTurn | None = None
        self._work = trio.lowlevel.ParkingLot()
        self._report = trio.Event()
        self._idle = trio.lowlevel.ParkingLot()
        self._stop = trio.Event()
        self._dispatcher_left = False  # it said goodbye: reconnect quietly until it is back
        self._budget: int | None = None  # tasks it may still take (max_tasks), None: no limit
        self._retiring = False  # took its last task (max_tasks): hands back every new one, then stops
        self.done = 0
        self.failed = 0

    # ============================================================= arriving
    async def _reader(self) -> None:
        """The connection's reader: reads while it holds the read turn, hands it to an idle runner that asks."""
        conn, turn = self._conn, self._turn
        assert conn is not None and turn is not None
        while True:
            if turn.runner is not None:  # a runner reads: wait until it hands the turn back
                await turn.reader_lot.park()
                if turn.error is not None:
                    raise turn.error
                if turn.goodbye:
                    return
                continue
            if turn.wanted and not self._queue and self._work:  # an idle runner asked to read
                turn.wanted = False
                turn.runner = UNCLAIMED
                self._work.unpark()
                continue
            with trio.CancelScope() as scope:
                turn.reader_scope = scope
                messages = await conn.receive_batch()
            turn.reader_scope = None
            if scope.cancelled_caught:
                continue  # cancelled to hand the turn over
            if not self._handle(conn, messages):
                return

    def _handle(self, conn: Connection, messages: list[Any]) -> bool:
        """Act on a batch of messages from the dispatcher; False once it said goodbye."""
        for message in messages:
            kind = type(message)
            if kind is m.Run:
                self._ack(message.ack)
                tasks = message.tasks
                if self._stop.is_set() or self._retiring:
                    conn.send(m.Release(ids=tuple(spec.id for spec in tasks), stopping=True))
                    continue
                if self._budget is not None:  # once per frame, not per task
                    tasks = self._spend(conn, tasks)
                self._queue.extend(tasks)
                if self._work:  # runners waiting for work (unpark() costs even with nobody parked)
                    self._work.unpark(count=len(tasks))
            elif kind is m.Reclaim:
                self._reclaim(conn, message.ids)
            elif kind is m.Heartbeat:
                self._ack(message.ack)
                if message.echo:  # the dispatcher times its round trip: answer at once
                    conn.send(m.Heartbeat(echo=message.echo))
            elif kind is m.Cancel:
                self._cancel(message.id, message.reason or "cancelled")
            elif kind is m.Message:
                self._hooks.call(self.on_message, message.data)
            elif kind is m.Goodbye:
                if message.stop:
                    log.info("the dispatcher said goodbye (%s) and asked its workers to stop: stopping", message.reason)
                    self._stop.set()
                else:
                    log.info("the dispatcher said goodbye: %s", message.reason)
                    self._dispatcher_left = True
                return False
        return True

    def _spend(self, conn: Connection, tasks: tuple[m.TaskSpec, ...]) -> tuple[m.TaskSpec, ...]:
        """Take what the budget (max_tasks) allows; with the last, hand the rest back and take no more.

        ``stopping`` on that Release makes the dispatcher send this worker
        nothing new; the worker stops once what it kept has run.
        """
        budget = self._budget
        assert budget is not None
        if len(tasks) < budget:
            self._budget = budget - len(tasks)
            return tasks
        self._budget = 0
        self._retiring = True
        conn.send(m.Release(ids=tuple(spec.id for spec in tasks[budget:]), stopping=True))
        return tasks[:budget]

    def _reclaim(self, conn: Connection, ids: tuple[str, ...]) -> None:
        """Hand back the requested tasks that have not started (another worker sits idle)."""
        wanted = set(ids)
        queue = self._queue
        released = [spec.id for spec in queue if spec.id in wanted]
        if released:
            kept = [spec for spec in queue if spec.id not in wanted]
            queue.clear()
            queue.extend(kept)  # the same deque: the runners hold it
            conn.send(m.Release(ids=tuple(released)))

    def _ack(self, seq: int) -> None:
        unacked = self._unacked
        while unacked and unacked[0].seq <= seq:
            unacked.popleft()

    def _cancel(self, task_id: str, reason: str) -> None:
        running = self._running.get(task_id)
        if running is not None:
            running.cancel_reason = reason
            running.scope.cancel()
            return
        for spec in self._queue:
            if spec.id == task_id:
                self._queue.remove(spec)
                self._outcome(m.Outcome(id=spec.id, status=m.CANCELLED, attempt=spec.attempt, reason=reason))
                return

    # ============================================================= reporting
    def _outcome(self, outcome: m.Outcome) -> None:
        self._results.append(outcome)
        self._report.set()

    async def _reporter(self) -> None:
        """Turn finished attempts into Results frames: one frame for all that ended since the last."""
        while True:
            await self._report.wait()
            self._report = trio.Event()
            self._send_report()

    def _send_report(self, wake: bool = True) -> None:
        conn = self._conn
        if conn is None or not (self._started or self._results):
            return
        started, results = tuple(self._started), self._results
        self._started, self._results = {}, []
        self._send_results(conn, started, results, wake)

    def _send_results(self, conn: Connection, started: tuple[str, ...], results: list[m.Outcome], wake: bool = True) -> None:
        """One Results frame, kept until acknowledged (so a broken connection loses nothing).

        This is the usual case, spelled out; the parts of a split are sent
        and kept the same way by :meth:`_send_results_split`.
        """
        frame = m.new_results(self._seq + 1, started, tuple(results))
        try:
            conn.send(frame, wake=wake)
        except LocalProtocolError:
            self._send_results_split(conn, started, results, wake)
            return
        except ConnectionClosed:
            pass  # resent from _unacked when the session resumes
        self._seq += 1
        self._unacked.append(frame)

    def _send_results_split(self, conn: Connection, started: tuple[str, ...], results: list[m.Outcome], wake: bool) -> None:
        """Results that do not fit one frame: halved by :func:`send_split`, ``started`` in the first part sent.

        A result that cannot be sent even alone (not JSON, too large) is
        reported as the task's error.
        """
        pending = started

        def send(part: list[m.Outcome]) -> None:
            nonlocal pending
            frame = m.new_results(self._seq + 1, pending, tuple(part))
            try:
                conn.send(frame, wake=wake)
            except ConnectionClosed:
                pass  # resent from _unacked when the session resumes
            self._seq += 1
            self._unacked.append(frame)
            pending = ()

        send_split(send, results, lambda outcome, _: send([encodable(outcome, self.max_frame_size)]))

    # =============================================================== running
    async def _runner(self) -> None:
        """Run queued tasks one after another (``concurrency`` of these loops run side by side).

        Entering a cancel scope costs more than a small task itself, so one
        scope serves every task without a deadline; cancelling such a task
        cancels its runner's scope, and the runner then opens a fresh one.
        """
        queue = self._queue
        me = object()  # who holds a ReadTurn
        while True:
            current: Running | None = None
            with trio.CancelScope() as scope:
                while True:
                    while not queue:
                        # Nothing more to run right now: report at once, from this
                        # task, instead of waking the reporter and the writer.
                        if self._results and self._conn is not None:
                            conn = self._conn
                            self._send_report(wake=False)
                            try:
                                await conn.write_now()
                            finally:
                                conn.wake_writer()  # if interrupted; a no-op once written
                            continue
                        if self._stop.is_set() and not self._running:
                            self._idle.unpark_all()
                        turn = self._turn
                        if turn is not None:
                            if turn.runner is UNCLAIMED:
                                turn.runner = me
                            if turn.runner is me:
                                await self._read_for_runner(turn)
                                continue
                            if turn.runner is None and not turn.wanted and turn.shared:
                                turn.wanted = True  # idle: ask the reader for the turn
                                if turn.reader_scope is not None:
                                    turn.reader_scope.cancel()
                        await self._work.park()
                    current = Running(queue.popleft(), scope)
                    turn = self._turn
                    if turn is not None and turn.runner is me:
                        await self._run_reading(current, turn)
                    else:
                        await self._run(current)
                    current = None
            if current is not None:  # the scope caught the cancellation of ``current``
                spec = current.spec
                self._running.pop(spec.id, None)
                self._started.pop(spec.id, None)
                reason = current.cancel_reason or "cancelled"
                self._outcome(m.Outcome(id=spec.id, status=m.CANCELLED, attempt=spec.attempt, reason=reason))
                self._wake_if_idle()

    async def _read_for_runner(self, turn: ReadTurn) -> None:
        """Read and act on the next batch from the dispatcher, in a runner that holds the read turn."""
        try:
            messages = await turn.conn.receive_batch()
        except Exception as exc:  # noqa: BLE001 - the connection failed or closed: the reader raises it, as if it had read
            turn.give_back(error=exc)
            return
        if not self._handle(turn.conn, messages):
            turn.give_back(goodbye=True)

    async def _run_reading(self, running: Running, turn: ReadTurn) -> None:
        """Run a task in a runner that holds the read turn: hand the turn back if the task waits for anything.

        The task's first step is taken by hand.  Most small tasks end in it,
        and the runner goes on reading with no hand-over at all; a task that
        waits for something gives the reader the turn first, then goes on as
        ``await`` would (the coroutine never leaves this task).
        """
        coro = self._run(running, announce=False)
        try:
            trap = coro.send(None)
        except StopIteration:
            return  # ended in its first step: this runner reports it with the rest of its batch
        self._report.set()  # it waits: report that it started
        if turn.runner is not None:
            turn.give_back()
        await resume(coro, trap)
        self._report.set()  # and its outcome now, not after the tasks queued behind it

    async def _run(self, running: Running, announce: bool = True) -> None:
        """Run one task and record its outcome; ``announce=False`` leaves waking the reporter to the caller."""
        spec = running.spec
        task_id = spec.id
        entry = self.tasks.get(spec.name)
        if entry is None:
            offered = ", ".join(sorted(self.tasks)) or "nothing"
            error = m.RemoteError(type="UnknownTask", message=f"this worker has no task {spec.name!r} (it offers: {offered})")
            self._outcome(m.Outcome(id=task_id, status=m.ERROR, attempt=spec.attempt, error=error))
            return
        fn, options = entry
        self._running[task_id] = running
        self._started[task_id] = None  # the dispatcher must know it started: only started tasks count a loss
        if announce:
            self._report.set()
        outcome: m.Outcome | None = None
        try:
            # The call is spelled out here, not in a helper coroutine: for a
            # small task, one more coroutine per call is a measurable share.
            limit = options.time_limit
            if spec.timeout is None and limit is None:
                if options.is_async:
                    value = await (fn(*spec.args, **spec.kwargs) if spec.kwargs else fn(*spec.args))
                else:
                    value = await self._call_sync(fn, options, spec)
            else:
                # The sooner of the task's deadline and its per-attempt time limit.
                by_limit = limit is not None and (spec.timeout is None or limit < spec.timeout)
                seconds = limit if by_limit else spec.timeout
                assert seconds is not None
                with trio.CancelScope(deadline=trio.current_time() + seconds) as scope:
                    running.scope = scope
                    if options.is_async:
                        value = await fn(*spec.args, **spec.kwargs)
                    else:
                        value = await self._call_sync(fn, options, spec)
                if scope.cancelled_caught:  # ours (a cancel message), the deadline, or the time limit
                    if running.cancel_reason is not None:
                        outcome = m.Outcome(id=task_id, status=m.CANCELLED, attempt=spec.attempt, reason=running.cancel_reason)
                    else:
                        if by_limit:
                            reason = f"the attempt ran past its time limit ({seconds:g} s)"
                        else:
                            reason = f"the task ran past its deadline ({seconds:g} s left when it started)"
                        outcome = m.Outcome(id=task_id, status=m.TIMEOUT, attempt=spec.attempt, reason=reason)
        except Exception as exc:  # noqa: BLE001 - the task's failure is its outcome
            self.failed += 1
            outcome = m.Outcome(id=task_id, status=m.ERROR, attempt=spec.attempt, error=describe_exception(exc))
        if outcome is None:
            self.done += 1
            outcome = m.new_outcome(task_id, m.OK, spec.attempt, value, None, None)
        del self._running[task_id]
        self._started.pop(task_id, None)  # the outcome says it started
        self._results.append(outcome)
        if announce:
            self._report.set()
        self._wake_if_idle()

    @staticmethod
    async def _call_sync(fn: Any, options: TaskOptions, spec: m.TaskSpec) -> Any:
        if options.thread:
            return await trio.to_thread.run_sync(functools.partial(fn, *spec.args, **spec.kwargs), abandon_on_cancel=True)
        return fn(*spec.args, **spec.kwargs)

    def _wake_if_idle(self) -> None:
        if not self._running and not self._queue and self._idle:  # unpark_all() costs microseconds, even idle
            self._idle.unpark_all()


_INTERNAL = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(trio.__file__), "outcome")


def describe_exception(exc: BaseException) -> m.RemoteError:
    """The wire form of an exception: type name, message and traceback text (never the object).

    Frames of trioschedule and trio themselves are left out of the traceback:
    the reader wants to see the task's own code.
    """
    tb = exc.__traceback__
    while tb is not None and (tb.tb_frame.f_code.co_filename.startswith(_INTERNAL[:2]) or "/outcome/" in tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return m.RemoteError(
        type=type(exc).__qualname__,
        message=str(exc),
        traceback="".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__)),
        retry_after=exc.after if isinstance(exc, Retry) else None,
    )


def encodable(outcome: m.Outcome, max_frame_size: int) -> m.Outcome:
    """``outcome`` if it can be sent in a frame on its own, else an error outcome saying why."""
    try:
        encode_frame(m.encode(m.Results(seq=0, results=(outcome,))), max_frame_size - 1024)
        return outcome
    except LocalProtocolError as exc:
        error = m.RemoteError(type="TypeError", message=f"the task's result cannot be sent: {exc}")
        return m.Outcome(id=outcome.id, status=m.ERROR, attempt=outcome.attempt, error=error)
