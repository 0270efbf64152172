"""The dispatcher's side of schedules: make their records durable, then submit their runs.

The decisions (which fire times run, misfire, coalesce, overlap, jitter)
are the core's (:mod:`trioschedule._core.schedules`).  This shell keeps one
rule: a run's schedule record is journaled before its task is submitted
(:meth:`ScheduleShell.settle`), so a crash in between can lose that run but
never run a fire time twice.  It also answers the admin ``schedule``
requests (docs/PROTOCOL.md).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from .._core.schedules import Schedules
from .._core.triggers import WIRE_FIELDS, define
from .._errors import StoreError, UnknownSchedule
from .._protocol import messages as m

if TYPE_CHECKING:
    from .._core.scheduler import Scheduler
    from .effects import Effects
    from .journal import StoreJournal

__all__ = ["ScheduleShell"]

log = logging.getLogger("trioschedule.dispatcher")


class ScheduleShell:
    """Owns the core's :class:`Schedules`; :meth:`run` saves and submits whenever they change."""

    def __init__(self, core: Scheduler, journal: StoreJournal, effects: Effects) -> None:
        self.core = core
        self.journal = journal
        self.effects = effects
        self.schedules = Schedules(core, wake=self._wake)
        self._wakeup = trio.Event()
        self._lock = trio.Lock()  # one settle at a time: saves stay in order

    def _wake(self) -> None:
        self._wakeup.set()

    async def restore(self) -> None:
        """After the journal is open and the tasks are recovered: the schedules, caught up."""
        self.schedules.restore(await self.journal.load_schedules())

    async def run(self) -> None:
        """Save and submit whatever the schedules decided, for as long as the dispatcher serves."""
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            await self.settle()

    async def settle(self) -> None:
        """Journal the changed records (durably), then submit the runs they decided."""
        async with self._lock:
            while True:
                records, deleted, ready = self.schedules.take_changes()
                if not (records or deleted or ready):
                    self.effects.flush()
                    return
                durable = True
                try:
                    await self.journal.save_schedules(records, deleted)
                except (StoreError, TypeError, ValueError) as exc:
                    durable = False
                    log.error("journaling schedules failed (%r): their runs due now are not submitted", exc)
                if ready:
                    self.schedules.submit_ready(ready, durable)
                self.effects.flush()  # Run frames, and the timer task's wake-up if a schedule's timer is the earliest now

    # ------------------------------------------------------------ the API's operations
    async def add(self, definition: dict[str, Any]) -> dict[str, Any]:
        d = define(**definition, now=self.core.wall_clock())
        s = self.schedules.add(d)
        await self.settle()
        return self.schedules.describe(s)

    async def remove(self, name: str) -> bool:
        removed = self.schedules.remove(name)
        await self.settle()
        return removed

    async def pause(self, name: str) -> dict[str, Any]:
        self._known(name)
        self.schedules.pause(name)
        await self.settle()
        return self.schedules.describe(self.schedules.get(name))

    async def resume(self, name: str) -> dict[str, Any]:
        self._known(name)
        self.schedules.resume(name)
        await self.settle()
        return self.schedules.describe(self.schedules.get(name))

    async def trigger(self, name: str) -> str:
        self._known(name)
        task_id = self.schedules.trigger(name)
        await self.settle()
        return task_id

    def list(self) -> list[dict[str, Any]]:
        return self.schedules.describe_all()

    def _known(self, name: str) -> None:
        if name not in self.schedules.schedules:
            raise UnknownSchedule(f"no schedule named {name!r}")

    # ------------------------------------------------------------ the wire
    async def answer(self, request: m.ScheduleRequest) -> m.ScheduleReply:
        """The reply to an admin's ``schedule`` request: a refusal is a reply, never a dropped connection."""
        op, name = request.op, request.name
        try:
            if op == "list":
                return m.ScheduleReply(schedules=tuple(self.list()))
            if op not in m.SCHEDULE_OPS:
                return _refused("bad-request", f"unknown schedule op {op[:32]!r}: one of {', '.join(m.SCHEDULE_OPS)}")
            if op == "add":
                definition = dict(request.schedule or {})
                unknown = sorted(set(definition) - set(WIRE_FIELDS))
                if unknown:
                    return _refused("bad-schedule", f"unknown field(s) in the schedule: {', '.join(unknown)}")
                if "name" not in definition or "task" not in definition:
                    return _refused("bad-schedule", "a schedule needs a name and a task")
                return m.ScheduleReply(schedules=(await self.add(definition),))
            if not name:
                return _refused("bad-request", f"schedule {op} needs the schedule's name")
            if op == "remove":
                if not await self.remove(name):
                    return _refused("unknown-schedule", f"no schedule named {name!r}")
                return m.ScheduleReply()
            if op == "pause":
                return m.ScheduleReply(schedules=(await self.pause(name),))
            if op == "resume":
                return m.ScheduleReply(schedules=(await self.resume(name),))
            task_id = await self.trigger(name)
            return m.ScheduleReply(schedules=(self.schedules.describe(self.schedules.get(name)),), task_id=task_id)
        except UnknownSchedule as exc:
            return _refused("unknown-schedule", str(exc.args[0]))
        except (ValueError, TypeError) as exc:
            return _refused("bad-schedule", str(exc))


def _refused(code: str, error: str) -> m.ScheduleReply:
    return m.ScheduleReply(code=code, error=error)

