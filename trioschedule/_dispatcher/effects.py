"""Carrying out what the scheduling core decided: frames out, waiters woken, hooks queued."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import trio

from .._core.scheduler import Scheduler
from .._core.sessions import WorkerSession
from .._errors import ConnectionClosed, LocalProtocolError
from .._hooks import HookRunner
from .._logging import context
from .._net.connection import Connection
from .._net.splitting import send_split
from .._protocol import messages as m

__all__ = ["Effects"]

log = logging.getLogger("trioschedule.dispatcher")


class Effects:
    """After every call into the :class:`Scheduler`, :meth:`flush` sends and wakes what it left behind.

    * Run frames and control messages for worker sessions, outcomes for clients.
    * The timer task, if an earlier timer was set; ``on_task_done`` hooks.
    * Tasks parked in :meth:`wait_room` or :meth:`wait_idle`.
    """

    def __init__(self, core: Scheduler, hooks: HookRunner, on_task_done: Any) -> None:
        self.core = core
        self.hooks = hooks
        self.on_task_done = on_task_done
        self.timer_wakeup = trio.Event()
        self.queued_on: set[Connection] = set()  # connections flush(wake=False) queued frames on
        self._room = trio.lowlevel.ParkingLot()
        self._room_waiters = 0  # an int to test on the hot path: cheaper than the ParkingLot's __bool__
        self._idle = trio.lowlevel.ParkingLot()

    def flush(self, wake: bool = True) -> None:
        """Send what the last state changes produced.

        ``wake=False`` leaves the connections' writer tasks asleep; the caller
        must then ``await write_now()`` (which wakes them if interrupted).
        """
        core = self.core
        while core.dirty_sessions:
            self._send_session(core.dirty_sessions.pop(), wake)
        while core.dirty_clients:
            client = core.dirty_clients.pop()
            if client.pending:
                if not wake:
                    self.queued_on.add(client.conn)
                outcomes, client.pending = client.pending, []
                send_split(partial(_send_outcomes, client.conn, wake), outcomes,
                           partial(_unsendable_outcome, client.conn))  # fmt: skip
        if core.timers.changed:
            core.timers.changed = False
            self.timer_wakeup.set()
        if core.ended:
            ended, core.ended = core.ended, []
            for args in ended:
                self.hooks.call(self.on_task_done, *args)
        if self._room_waiters and core.unfinished < core.limits.max_queued:
            self._room.unpark(count=core.limits.max_queued - core.unfinished)
        if not core.running and self._idle:  # unpark_all() costs microseconds even with nobody parked
            self._idle.unpark_all()

    def _send_session(self, session: WorkerSession, wake: bool) -> None:
        conn = session.conn
        if conn is None:
            session.control.clear()
            return
        if session.control:  # before the Run frame, as when they were sent at once
            control, session.control = session.control, []
            for message in control:
                try:
                    conn.send(message)
                except ConnectionClosed:
                    pass  # the reader notices and the session's grace period starts
                except LocalProtocolError as exc:
                    log.warning("cannot send %s to worker %r: %s", type(message).TYPE, session.peer.name, exc,
                                extra=context(peer=session.peer.name, worker_pid=session.peer.pid))  # fmt: skip
        if session.buffer:
            if not wake:
                self.queued_on.add(conn)
            batch, session.buffer = session.buffer, []
            try:
                conn.send_payload(m.Run, m.encode_run(batch, session.acked), wake=wake)
            except ConnectionClosed:
                pass  # its reader notices; the tasks are requeued from session.assigned
            except LocalProtocolError:  # too large, or not JSON: split it up
                send_split(partial(_send_run, conn, session.acked, wake), batch,
                           partial(self._unsendable_task, session))  # fmt: skip

    async def write_now(self) -> None:
        """Write what :meth:`flush` queued, from this task (no writer wake-ups on the way)."""
        queued = self.queued_on
        try:
            while queued:
                await queued.pop().write_now()
        finally:
            while queued:  # interrupted: the writer tasks take over
                queued.pop().wake_writer()

    def _unsendable_task(self, session: WorkerSession, spec: dict[str, Any], exc: Exception) -> None:
        self.core.unsendable(session, spec["id"], spec.get("attempt", 1), exc)

    async def wait_room(self, count: int) -> None:
        """Wait until ``count`` more tasks fit under ``max_queued`` (or the dispatcher drains)."""
        core = self.core
        while core.unfinished + count > core.limits.max_queued and not core.draining:
            self._room_waiters += 1
            try:
                await self._room.park()
            finally:
                self._room_waiters -= 1

    async def wait_idle(self) -> None:
        """Wait until no task is running."""
        while self.core.running:
            await self._idle.park()


def _send_run(conn: Connection, ack: int, wake: bool, specs: list[dict[str, Any]]) -> None:
    conn.send_payload(m.Run, m.encode_run(specs, ack), wake=wake)


def _send_outcomes(conn: Connection, wake: bool, outcomes: list[m.Outcome]) -> None:
    conn.send(m.Outcomes(results=tuple(outcomes)), wake=wake)


def _unsendable_outcome(conn: Connection, outcome: m.Outcome, exc: Exception) -> None:
    error = m.RemoteError(type="EncodingError", message=f"the task's outcome cannot be sent: {exc}")
    replacement = m.Outcome(id=outcome.id, status=m.ERROR, attempt=outcome.attempt, error=error)
    send_split(partial(_send_outcomes, conn, True), [replacement], lambda *_: None)

