"""The one seam between the dispatcher and its store: journaling, durability and the write barrier.

The scheduling core reports state changes through :class:`StoreJournal`
(its :class:`~trioschedule._core.journal.Journal` side, synchronous); the
dispatcher's shell awaits durability through it (``add_new``, ``add_chunk``,
``flush``); and each connection's writer waits on its write barrier, so that
nothing reaches a peer before what it depends on is journaled.  Everything
that knows which optional methods a :class:`~trioschedule.Store` has lives
here.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from .._core.metrics import COMMIT_BUCKETS, Histogram
from .._core.recovery import row_of
from .._core.tasks import DONE, RUNNING, Task
from .._errors import StoreError, StoreFenced
from .._protocol import messages as m
from .._store.base import Store, StoredTask

__all__ = ["StoreJournal"]

_unstructure_outcome = m.converter.get_unstructure_hook(m.Outcome)


class StoreJournal:
    """Journals the scheduler's tasks in a :class:`~trioschedule.Store`.

    ``clock``/``wall_clock`` are the scheduler's: deadlines live on the
    first and are journaled on the second.
    """

    def __init__(self, store: Store, *, clock: Callable[[], float], wall_clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock
        self.wall_clock = wall_clock
        self.active = False  # a durable store is open
        # Running and done are journaled as narrow updates if the store has them (docs/STORE.md).
        self.bulk_starts = False
        self._narrow = False
        #: Seconds each wait for durability took (``flush``, and each connection's write barrier), for metrics.
        self.commit_time = Histogram(COMMIT_BUCKETS)
        #: Called once a write finds the store fenced (a newer leader took the lease of a shared
        #: store, docs/HA.md): the dispatcher steps down.  The write raises StoreFenced all the same.
        self.on_fenced: Callable[[StoreFenced], None] | None = None

    # ------------------------------------------------------------ lifecycle
    async def open(self) -> list[StoredTask]:
        """Open the store; returns what it holds to recover."""
        stored = await self.store.open()
        self.active = self.store.durable
        self._narrow = self.bulk_starts = self.active and type(self.store).narrow_updates()
        return stored

    async def close(self) -> None:
        self.active = False
        await self.store.close()

    # ------------------------------------------------- the core's side (sync)
    def changed(self, task: Task) -> None:
        if self._narrow:
            state = task.state
            if state == RUNNING and task.session is not None:
                self.store.update_running(task.id, task.attempt, task.failures, task.losses, task.session.id)
                return
            if state == DONE and task.outcome is not None:
                self.store.update_done(task.id, task.attempt, task.failures, task.losses,
                                       _unstructure_outcome(task.outcome), task.finished_at)  # fmt: skip
                return
        self.store.update(self._stored(task))

    def started_first(self, task_ids: list[str], session_id: str) -> None:
        self.store.update_running_many(task_ids, 1, 0, 0, session_id)

    def forget(self, task_ids: list[str]) -> None:
        self.store.forget(task_ids)

    # ------------------------------------------------- the shell's side (async)
    async def add_new(self, tasks: list[Task]) -> None:
        """Journal newly accepted tasks; returns once they are durable (raises :class:`StoreError`)."""
        if not self.active or not tasks:
            return
        now, wall = self.clock(), self.wall_clock()
        try:
            await self._add_new(tasks, now, wall)
        except StoreFenced as exc:
            self.fenced(exc)
            raise

    async def _add_new(self, tasks: list[Task], now: float, wall: float) -> None:
        if all(t.attempt == 0 and t.state != DONE for t in tasks):  # as accepted: only what is not a default
            await self.store.add_new([
                (t.id, t.name, t.args, t.kwargs, t.priority, t.retries,
                 None if t.deadline is None else wall + (t.deadline - now), t.not_before, t.submitted_at)
                for t in tasks
            ])  # fmt: skip
        else:
            await self.store.add([self._stored(t, now, wall) for t in tasks])

    async def add_chunk(self, chunk: list[Task], args_list: list[Any]) -> None:
        """:meth:`add_new` for a ``map()`` chunk: the tasks differ only in id and args."""
        if not self.active or not chunk:
            return
        first = chunk[0]
        deadline = first.deadline
        if deadline is not None:
            deadline = self.wall_clock() + (deadline - self.clock())
        try:
            await self.store.add_new_many(
                [task.id for task in chunk], args_list, first.name, first.kwargs, first.priority, first.retries,
                deadline, first.not_before, first.submitted_at,
            )  # fmt: skip
        except StoreFenced as exc:
            self.fenced(exc)
            raise

    async def flush(self) -> None:
        """Make everything journaled so far durable."""
        try:
            if not self.active:
                await self.store.flush()
                return
            started = time.perf_counter()
            await self.store.flush()
            self.commit_time.observe(time.perf_counter() - started)
        except StoreFenced as exc:
            self.fenced(exc)
            raise

    def fenced(self, exc: StoreFenced) -> None:
        """A write found the store fenced: tell the dispatcher (once is enough; it steps down)."""
        if self.on_fenced is not None:
            self.on_fenced(exc)

    # ------------------------------------------------- schedules (async)
    async def load_schedules(self) -> list[dict[str, Any]]:
        """The schedule records the store holds (none without a durable store); after :meth:`open`."""
        if not self.active:
            return []
        return await self.store.load_schedules()

    async def save_schedules(self, records: list[dict[str, Any]], deleted: list[str]) -> None:
        """Make these schedule records durable and drop ``deleted``; returns once that is durable.

        The dispatcher saves a run's record before it submits the run's task
        (docs/SCHEDULES.md, "At most once"), so nothing here waits for tasks.
        A fenced store (a newer leader holds the lease) raises StoreFenced and
        the dispatcher steps down, as for any other write.
        """
        if not self.active or not (records or deleted):
            return
        try:
            if records:
                await self.store.save_schedules(records)
            for name in deleted:
                await self.store.delete_schedule(name)
        except StoreFenced as exc:
            self.fenced(exc)
            raise

    def barrier(self, *, refuse_after_failure: bool) -> tuple[Callable[[], Any] | None, Callable[[Any], Awaitable[None]]]:
        """A connection's write barrier: ``(mark, wait)``.

        The connection takes ``mark()`` when it queues a frame and awaits
        ``wait(mark)`` before writing it, so a frame waits for the commit of
        what was journaled before it, not for everything since.  A store
        without marks makes the wait a full flush.  With
        ``refuse_after_failure=False`` (clients) the wait gives up quietly
        once the journal has failed: the client must still hear that its
        submissions are refused; a worker must get nothing more to run.
        Neither gets anything once the store is fenced: a dispatcher that
        lost its lease must not tell anyone anything more (the new leader
        will), so the wait raises and the connection closes.
        """
        store = self.store
        observe = self.commit_time.observe
        clock = time.perf_counter
        if type(store).mark is not Store.mark:
            mark: Callable[[], Any] | None = store.mark

            async def store_flush(position: Any) -> None:
                started = clock()
                await store.flush(position)
                observe(clock() - started)

        else:  # a store without marks (and perhaps an older flush() without the argument)
            mark = None

            async def store_flush(position: Any) -> None:  # (no marks: everything is flushed)
                started = clock()
                await store.flush()
                observe(clock() - started)

        async def fenced_flush(position: Any) -> None:
            try:
                await store_flush(position)
            except StoreFenced as exc:
                self.fenced(exc)
                raise

        # Only a shared store can be fenced: the others keep the shorter path.
        flush = fenced_flush if store.shared else store_flush

        if refuse_after_failure:
            return mark, flush

        async def flush_unless_failed(position: Any) -> None:
            try:
                await flush(position)
            except StoreFenced:
                raise
            except StoreError:  # submissions are refused with "store-failed" from now on
                pass

        return mark, flush_unless_failed

    # --------------------------------------------------------------- helpers
    def _stored(self, task: Task, now: float | None = None, wall: float | None = None) -> StoredTask:
        if now is None or wall is None:
            now, wall = self.clock(), self.wall_clock()
        return row_of(task, now, wall)
