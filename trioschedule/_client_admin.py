"""The client's admin requests: status, task listings, stopping the dispatcher, managing schedules.

:class:`AdminRequests` is a base class of :class:`~trioschedule.Client`; each
request is one message answered by one reply (``Client._request``), sent
only by a client opened with ``role="admin"`` (and the admin token, when the
dispatcher has one per role).  The command line's ``status``, ``tasks``,
``stop`` and ``schedule`` commands are these calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import _defaults as defaults
from ._core.triggers import wire_definition
from ._errors import LocalProtocolError, UnknownSchedule
from ._protocol import messages as m
from ._protocol.connection import ADMIN

__all__ = ["AdminRequests"]


class AdminRequests:
    """What a client with ``role="admin"`` may ask of the dispatcher."""

    role: str

    async def _request(self, message: Any, reply_type: type) -> Any:  # pragma: no cover - the Client's
        raise NotImplementedError

    async def status(self) -> dict[str, Any]:
        """The dispatcher's status (needs ``role="admin"``)."""
        reply = await self._request(m.StatusRequest(), m.StatusReply)
        return reply.status  # type: ignore[no-any-return]

    async def tasks(self, *, failed: bool = False, unfinished: bool = False, limit: int = defaults.TASKS_LISTED) -> list[dict[str, Any]]:
        """Recent task outcomes, newest first, or with ``unfinished`` the tasks not ended yet (needs ``role="admin"``).

        ``failed`` keeps outcomes other than ``ok``.  The dispatcher keeps its
        last ``history`` outcomes (``Dispatcher(history=N)``) and caps ``limit``.
        """
        reply = await self._request(m.TasksRequest(failed=failed, unfinished=unfinished, limit=limit), m.TasksReply)
        return list(reply.tasks)

    async def stop_dispatcher(self, grace: float | None = None, *, workers: bool = False) -> float:
        """Ask the dispatcher to drain and exit (needs ``role="admin"``); returns its grace period.

        ``workers=True`` stops its connected workers too (``Dispatcher.stop``).
        """
        reply = await self._request(m.Stop(grace=grace, workers=workers), m.Stopping)
        return reply.grace  # type: ignore[no-any-return]

    # ------------------------------------------------------------ schedules (admin)
    async def add_schedule(
        self,
        name: str,
        task: str,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        every: float | None = None,
        start: Any = None,
        cron: str | None = None,
        tz: str | None = None,
        at: Any = None,
        misfire_grace: float | None = None,
        coalesce: str = "latest",
        overlap: str = "skip",
        jitter: float = 0.0,
        timeout: float | None = None,
        retries: int | None = None,
        priority: int = 0,
    ) -> dict[str, Any]:
        """:meth:`Dispatcher.add_schedule` over the connection (needs ``role="admin"``).

        Checked here first (ValueError, nothing sent), then by the
        dispatcher (a refusal raises ValueError with its reason).  Returns the
        schedule's status entry once the dispatcher journaled it.
        """
        definition = wire_definition(
            name=name, task=task, args=args, kwargs=kwargs, every=every, start=start, cron=cron, tz=tz, at=at,
            misfire_grace=misfire_grace, coalesce=coalesce, overlap=overlap, jitter=jitter, timeout=timeout,
            retries=retries, priority=priority,
        )  # fmt: skip
        reply = await self._schedule(m.ScheduleRequest(op="add", name=name, schedule=definition))
        return reply.schedules[0]  # type: ignore[no-any-return]

    async def remove_schedule(self, name: str) -> bool:
        """Remove the schedule ``name``; False if the dispatcher has none (needs ``role="admin"``)."""
        try:
            await self._schedule(m.ScheduleRequest(op="remove", name=name))
        except UnknownSchedule:
            return False
        return True

    async def pause_schedule(self, name: str) -> dict[str, Any]:
        """Pause ``name`` (raises :class:`UnknownSchedule`; needs ``role="admin"``)."""
        return (await self._schedule(m.ScheduleRequest(op="pause", name=name))).schedules[0]  # type: ignore[no-any-return]

    async def resume_schedule(self, name: str) -> dict[str, Any]:
        """Resume ``name`` from now on (raises :class:`UnknownSchedule`; needs ``role="admin"``)."""
        return (await self._schedule(m.ScheduleRequest(op="resume", name=name))).schedules[0]  # type: ignore[no-any-return]

    async def trigger_schedule(self, name: str) -> str:
        """Run ``name``'s task now, once; returns the run's task id (``client.task(id)`` awaits it)."""
        reply = await self._schedule(m.ScheduleRequest(op="trigger", name=name))
        return str(reply.task_id)

    async def schedules(self) -> list[dict[str, Any]]:
        """Every schedule's status entry, by name (needs ``role="admin"``)."""
        return list((await self._schedule(m.ScheduleRequest(op="list"))).schedules)

    async def _schedule(self, request: m.ScheduleRequest) -> m.ScheduleReply:
        if self.role != ADMIN:
            raise LocalProtocolError("schedules are admin operations: open the client with role='admin' "
                                     "(and the admin token, if the dispatcher has one per role)")  # fmt: skip
        reply: m.ScheduleReply = await self._request(request, m.ScheduleReply)
        if reply.error is not None:
            if reply.code == "unknown-schedule":
                raise UnknownSchedule(reply.error)
            raise ValueError(f"the dispatcher refused the schedule: {reply.error}")
        return reply
