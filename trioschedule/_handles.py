"""Task handles: what ``submit`` returns, on the dispatcher and on a client alike."""

from __future__ import annotations

from typing import Any, Protocol

import trio

from ._errors import TaskCancelled, TaskFailed, TaskLost, TaskTimeout, UnknownTaskId
from ._protocol import messages as m

__all__ = ["OutcomeSlot", "OutcomeSource", "TaskHandle", "to_exception", "unwrap", "values_of"]


def unwrap(outcome: m.Outcome) -> Any:
    """The task's value, or the exception that describes how it ended."""
    status = outcome.status
    if status == m.OK:
        return outcome.value
    raise to_exception(outcome)


def to_exception(outcome: m.Outcome) -> BaseException:
    """The exception a caller sees for a task that ended without a value."""
    status, task_id = outcome.status, outcome.id
    if status == m.ERROR:
        error = outcome.error or m.RemoteError(type="Error", message=outcome.reason or "task failed")
        return TaskFailed(error.type, error.message, error.traceback, task_id=task_id)
    if status == m.CANCELLED:
        return TaskCancelled(outcome.reason, task_id=task_id)
    if status == m.TIMEOUT:
        return TaskTimeout(outcome.reason or "task timed out", task_id=task_id)
    if status == m.LOST:
        return TaskLost(outcome.reason or "task lost", task_id=task_id)
    if status == m.UNKNOWN:
        return UnknownTaskId(f"the dispatcher knows no task {task_id!r} (never submitted, or its result expired)")
    return TaskFailed("ProtocolError", f"unknown task status {status!r}", task_id=task_id)


def values_of(outcomes: list[m.Outcome], return_exceptions: bool) -> list[Any]:
    """The values of ``map()``, in order: failures in their place, or the first failure raised."""
    values: list[Any] = []
    first_error: BaseException | None = None
    for outcome in outcomes:
        if outcome.status == m.OK:
            values.append(outcome.value)
        else:
            exc = to_exception(outcome)
            first_error = first_error or exc
            values.append(exc)
    if first_error is not None and not return_exceptions:
        raise first_error
    return values


class OutcomeSource(Protocol):
    """Where a :class:`TaskHandle` learns how its task ended, and asks to cancel it: the handle's one seam.

    The dispatcher knows its tasks itself; a client asks its dispatcher over
    the connection.  Each gives its handles an object with these three
    methods (not itself, so that no private method of the Dispatcher or the
    Client is called from outside, and neither grows a public one).
    """

    async def wait_outcome(self, task_id: str) -> m.Outcome:
        """Wait for task ``task_id`` to end and return its outcome (``UNKNOWN`` if there is no such task)."""
        ...

    def peek_outcome(self, task_id: str) -> m.Outcome | None:
        """The outcome if it is known here already, else None (never waits)."""
        ...

    async def cancel_task(self, task_id: str, reason: str | None) -> None:
        """Ask for the task to be cancelled; returns once the request is taken (the outcome tells what happened)."""
        ...


class TaskHandle:
    """A submitted task: ``await handle.result()`` gives its value or raises.

    Handles are cheap and hold no connection of their own; any number of
    them may wait on the same task.  ``slot``, when the submitter has one,
    is where the outcome will land: waiting on it needs no call to ``source``.
    """

    __slots__ = ("_slot", "_source", "id", "name")

    def __init__(self, source: OutcomeSource, task_id: str, name: str = "", slot: OutcomeSlot | None = None) -> None:
        self._source = source
        self._slot = slot
        self.id = task_id
        self.name = name

    async def result(self) -> Any:
        """Wait for the task to end; return its value or raise a :class:`~trioschedule.TaskError`."""
        return unwrap(await self.outcome())

    async def outcome(self) -> m.Outcome:
        """Wait for the task to end and return its raw :class:`Outcome` (never raises for the task)."""
        if self._slot is not None:
            return await self._slot.wait()
        return await self._source.wait_outcome(self.id)

    async def cancel(self, reason: str | None = None) -> None:
        """Cancel the task if it has not ended: at once when queued, over the wire when running.

        Returns once the dispatcher has taken the request; ``result()`` then
        raises :class:`~trioschedule.TaskCancelled` with ``reason`` (unless
        the task ended first, in which case its real outcome stands).
        """
        await self._source.cancel_task(self.id, reason)

    def done(self) -> bool:
        """True once the outcome is known here."""
        if self._slot is not None and self._slot.outcome is not None:
            return True
        return self._source.peek_outcome(self.id) is not None

    def __repr__(self) -> str:
        return f"<TaskHandle {self.name or 'task'} {self.id}>"


class OutcomeSlot:
    """One task's outcome as it becomes known, with an event to wait on."""

    __slots__ = ("_event", "outcome")

    def __init__(self) -> None:
        self.outcome: m.Outcome | None = None
        self._event: trio.Event | None = None

    def set(self, outcome: m.Outcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
            if self._event is not None:
                self._event.set()

    async def wait(self) -> m.Outcome:
        if self.outcome is None:
            if self._event is None:
                self._event = trio.Event()
            await self._event.wait()
        assert self.outcome is not None
        return self.outcome
