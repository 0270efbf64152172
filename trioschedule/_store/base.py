"""Where a dispatcher journals its tasks: the :class:`Store` interface and the records it journals.

The dispatcher keeps every live task in memory and tells its store about each
state change.  :class:`MemoryStore` (the Python API's default) forgets
everything; a durable store writes a journal so that a restarted dispatcher
picks up where the old one died.  The contract is in docs/STORE.md.

This module knows no implementation: stores are chosen by URL scheme in
:mod:`.registry`, which imports them.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["Leadership", "Lease", "Member", "MemoryStore", "NewTask", "Store", "StoredTask", "new_stored_task"]


@attrs.define(kw_only=True)
class StoredTask:
    """A task as journaled: everything needed to run it again or to report its outcome."""

    id: str
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    priority: int = 0
    retries: int | None = None
    deadline: float | None = None  # wall-clock (time.time()) deadline
    not_before: float | None = None  # wall-clock time before which it must not run
    state: str = "queued"  # queued | running | done
    attempt: int = 0
    failures: int = 0
    losses: int = 0
    session: str | None = None  # worker session while running
    outcome: dict[str, Any] | None = None  # the Outcome, unstructured, once done
    submitted_at: float = 0.0
    finished_at: float | None = None


#: A task as accepted and not yet run: ``(id, name, args, kwargs, priority, retries, deadline, not_before,
#: submitted_at)``, the fields of :class:`StoredTask` that are not at their defaults (``state`` is
#: ``"queued"``, ``attempt``/``failures``/``losses`` are 0, no ``session``, ``outcome`` or ``finished_at``).
NewTask = tuple[str, str, list[Any], dict[str, Any], int, int | None, float | None, float | None, float]


def new_stored_task(
    task_id: str, name: str, args: list[Any], kwargs: dict[str, Any], priority: int, retries: int | None,
    deadline: float | None, not_before: float | None, submitted_at: float,
) -> StoredTask:  # fmt: skip
    """The :class:`StoredTask` of a :data:`NewTask`."""
    return StoredTask(
        id=task_id, name=name, args=args, kwargs=kwargs, priority=priority, retries=retries, deadline=deadline,
        not_before=not_before, submitted_at=submitted_at,
    )  # fmt: skip


@attrs.frozen
class Lease:
    """The leadership lease of a shared store, as :meth:`Leadership.current` read it (docs/HA.md).

    ``term`` grows by one each time the lease changes hands and is the fencing
    token (:meth:`Store.fence`); ``holder`` is the holding dispatcher's node
    id (unique per process run); ``address`` the ``HOST:PORT`` peers should
    connect to (``""`` if unknown); ``expires_in`` the seconds until it
    expires by the database's clock (negative: expired).
    """

    term: int
    holder: str
    address: str
    expires_in: float


@attrs.frozen
class Member:
    """A dispatcher that announced itself on a shared store (:meth:`Leadership.members`)."""

    holder: str
    address: str
    role: str  # "leader" | "standby"
    seen_ago: float  # seconds since its last announce, by the database's clock


class Leadership:
    """The lease of a shared store: who leads, for which term, and who else is alive.

    Every time is the database's clock, so dispatchers' clocks need not
    agree.  An implementation uses a connection of its own (not the
    journal's), with short statement timeouts, so a slow journal never
    delays a renewal.  Failures to reach the database raise
    :class:`~trioschedule.StoreError`.
    """

    async def campaign(self, holder: str, address: str, ttl: float) -> int | None:
        """Take the lease if nobody holds it or it has expired: return the new term (old term + 1).

        None if someone else holds a live lease.  Atomic in one transaction.
        """
        raise NotImplementedError

    async def renew(self, term: int, ttl: float) -> bool:
        """Extend the lease to now + ``ttl`` if ``term`` still holds it; False if it was lost."""
        raise NotImplementedError

    async def resign(self, term: int) -> None:
        """Expire the lease now if ``term`` holds it (a clean stop hands over without waiting)."""
        raise NotImplementedError

    async def current(self) -> Lease | None:
        """The lease as it is (None if never taken)."""
        raise NotImplementedError

    async def announce(self, holder: str, address: str, role: str) -> None:
        """Record that this dispatcher is alive (upsert by ``holder``)."""
        raise NotImplementedError

    async def members(self, within: float) -> list[Member]:
        """The dispatchers announced in the last ``within`` seconds."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release the lease's connection (not the lease: see :meth:`resign`)."""


class Store:
    """The journal interface.  The base class keeps nothing (see :class:`MemoryStore`).

    ``add`` must return only once the tasks are durable; ``update`` may be
    buffered, but the store must keep updates to one task in order, and
    ``flush``/``close`` make everything buffered durable.  Failures of the
    journal itself (``open``, ``add``, ``flush``, ``close``) are raised as
    :class:`~trioschedule.StoreError`.

    Who owns the waiting tasks is the seam :attr:`owns_queue` names.  Today
    the dispatcher does: it keeps every live task, the queue and the timers in
    memory, and the store only journals what happened to them, to hand it all
    back at :meth:`open` after a restart.  A store shared by several
    dispatchers would own them instead (claims, leases; docs/STORE.md): such a
    store sets ``owns_queue = True`` and the dispatcher would take work from
    it rather than from its own queue.  No store sets it yet; it marks where
    that change plugs in.
    """

    #: True if the store survives a restart (the dispatcher skips journaling when False).
    durable = False
    #: Names the store in logs and ``status``.
    url = "memory:"
    #: True if the store, not the dispatcher, holds the waiting tasks (see the class docstring).
    owns_queue = False
    #: True if several dispatchers may open this store at once, one leading (docs/HA.md).
    shared = False

    def leadership(self) -> Leadership | None:
        """The lease object for a shared store; None for a store one dispatcher owns."""
        return None

    def fence(self, term: int) -> None:
        """Make every later journal write conditional on the lease's term still being ``term``.

        From now on each write transaction first checks, in the same
        transaction, that the lease's term is still ``term``; if not it
        writes nothing and raises :class:`~trioschedule._errors.StoreFenced`.
        The dispatcher calls it right after winning a campaign, before
        :meth:`open`.  A store that is not :attr:`shared` refuses it.
        """
        raise TypeError(f"{type(self).__name__} is not shared by several dispatchers: it has no lease to fence by")

    async def open(self) -> list[StoredTask]:
        """Prepare the store and return the tasks to recover (unfinished and retained finished ones)."""
        return []

    async def add(self, tasks: list[StoredTask]) -> None:
        """Journal newly accepted tasks; return once they are durable."""

    async def add_new(self, tasks: list[NewTask]) -> None:
        """``add`` for tasks given as :data:`NewTask` tuples (what the dispatcher journals on submission).

        The default builds the :class:`StoredTask` records and calls ``add``;
        a store may encode the tuples directly instead.
        """
        await self.add([new_stored_task(*task) for task in tasks])

    async def add_new_many(
        self, ids: list[str], args: list[Any], name: str, kwargs: dict[str, Any], priority: int, retries: int | None,
        deadline: float | None, not_before: float | None, submitted_at: float,
    ) -> None:  # fmt: skip
        """``add_new`` for tasks accepted together that differ only in id and ``args`` (a ``map()`` chunk).

        ``ids[i]`` has the arguments ``args[i]``.  The default makes the
        :data:`NewTask` tuples; a store may write the shared fields once.
        """
        await self.add_new([
            (task_id, name, task_args, kwargs, priority, retries, deadline, not_before, submitted_at)
            for task_id, task_args in zip(ids, args)
        ])  # fmt: skip

    def update(self, task: StoredTask) -> None:
        """Journal a task's new state (buffered; group-committed)."""

    # Narrow updates: the two state changes every task goes through, without
    # rebuilding and re-encoding the whole task.  The dispatcher calls them
    # only if the store's class overrides both (``narrow_updates``), and only
    # for a task the store already holds (``add``ed or ``update``d before);
    # otherwise it sends the whole task to ``update``.  Each one means exactly
    # what ``update`` of the whole task would: the fields not named here did
    # not change since the task was last journaled.

    def update_running(self, task_id: str, attempt: int, failures: int, losses: int, session: str) -> None:
        """The task was handed to a worker: ``state="running"``, no ``not_before`` (buffered like ``update``)."""

    def update_running_many(self, task_ids: list[str], attempt: int, failures: int, losses: int, session: str) -> None:
        """:meth:`update_running` for tasks handed to one worker together, all with these counts.

        The store may keep ``task_ids``: the caller does not change the list afterwards.
        """
        for task_id in task_ids:
            self.update_running(task_id, attempt, failures, losses, session)

    def update_done(
        self, task_id: str, attempt: int, failures: int, losses: int, outcome: dict[str, Any], finished_at: float
    ) -> None:
        """The task ended: ``state="done"``, no ``session``/``not_before``, ``args``/``kwargs`` dropped
        (``[]``/``{}``), ``outcome`` (the Outcome, unstructured) and ``finished_at`` set (buffered like ``update``)."""

    @classmethod
    def narrow_updates(cls) -> bool:
        """True if this store implements :meth:`update_running` and :meth:`update_done` itself."""
        return cls.update_running is not Store.update_running and cls.update_done is not Store.update_done

    def forget(self, task_ids: list[str]) -> None:
        """Drop finished tasks whose retention has passed."""

    def mark(self) -> Any:
        """A mark for everything added, updated and forgotten so far, for :meth:`flush`.

        The base class has no positions (None): its ``flush(mark)`` makes
        everything durable, as ``flush()`` does.
        """
        return None

    async def flush(self, mark: Any = None) -> None:
        """Make every buffered update durable; with a :meth:`mark`, at least everything before it."""

    # Schedules (docs/SCHEDULES.md).  A schedule is journaled as one JSON-able
    # record keyed by its ``"name"``; the dispatcher owns the record's shape.
    # The base class keeps none: with ``memory:`` schedules last as long as
    # the dispatcher's process.

    async def load_schedules(self) -> list[dict[str, Any]]:
        """The schedule records journaled so far (called once, after :meth:`open`)."""
        return []

    async def save_schedules(self, records: list[dict[str, Any]]) -> None:
        """Insert or replace the records by ``record["name"]``; return once they are durable."""

    async def delete_schedule(self, name: str) -> None:
        """Drop the schedule record ``name`` (no error if there is none); return once that is durable."""

    async def close(self) -> None:
        """Flush and release the store."""


class MemoryStore(Store):
    """``memory:``, the Python API's default: keeps nothing.

    A dispatcher with this store loses its queue when it stops, and says so:
    unfinished tasks end as ``lost`` when it drains.
    """

