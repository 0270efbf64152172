"""The Trio side of a store whose journal one writer thread commits as a change log (SQLite, PostgreSQL).

The dispatcher's thread only appends operations (:mod:`.changelog`) to a list
the writer thread takes from (no lock on that path), and parks until the
writer says the batch that holds them is committed.  This class is that side:
buffering the operations, opening the writer thread, group-commit tickets
(``mark``/``flush``), waking the parked callers, closing, and turning a
writer's failure into :class:`StoreError`.  How a batch is written is each
store's writer (its other base class), which provides the shared state named
below.  docs/STORE.md has the contract.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio

from .._errors import StoreError, StoreFenced
from . import changelog
from .base import NewTask, StoredTask
from .changelog import ACCEPTED, ADDED, FINISH, FORGET, FORGETS, RUN, RUNS, VALUES, Op, new_rows, values
from .generation import Checkpoints

__all__ = ["StoreStatistics", "ThreadedJournal", "encodable", "encoded_batch"]

log = logging.getLogger("trioschedule.store")


@attrs.frozen(kw_only=True)
class StoreStatistics:
    """What a durable store's ``statistics()`` reports (counted since the last ``open()``).

    ``commits`` counts the writer's transactions that journaled changes (the
    schema set-up at open and checkpoints are not counted);
    ``rows_written``/``rows_deleted`` the task operations they journaled
    (added, updated) and the tasks they forgot; ``rows_skipped`` buffered
    updates that could not be encoded as JSON (each one is logged);
    ``pending`` the operations buffered and not yet handed to the writer;
    ``failed`` whether a write failed, which stops the store (see
    :class:`StoreError`); ``checkpoints`` how many checkpoints brought the
    ``tasks`` table up to date (see docs/STORE.md); ``reconnects`` how many
    times the PostgreSQL store's writer reconnected to its database (0 for
    SQLite).
    """

    commits: int
    rows_written: int
    rows_deleted: int
    rows_skipped: int
    pending: int
    failed: bool
    checkpoints: int = 0
    reconnects: int = 0  # the PostgreSQL store's: times the writer reconnected to a database it lost


class ThreadedJournal:
    """Open, wait for commits, and close a journal written by one thread of its own.

    The writer base class sets, in ``_reset_writer()``, what both sides share
    under ``_mutex`` (``_cond`` is a condition on it): ``_ops`` (the buffered
    operations), ``_batch`` (the number of the batch being gathered),
    ``_committed`` (the last batch committed), ``_pending_since``,
    ``_urgent``, ``_closing``, ``_failure`` and ``_schedule_ops`` (schedule
    records to write, ``(name, text or None)``, taken with the operations
    buffered before them); and it provides
    ``_open_database()`` (in the thread: returns the tasks to recover),
    ``_open_error(exc)``, ``_write(batch, schedule_ops)``, ``_idle_checkpoint(closing)``
    and ``_failed_error()``; the loop that calls them is here (:meth:`_write_loop`).
    A subclass names its journal (``_journal_name``, for messages) and
    releases what the thread held in ``_close_connection()``.
    """

    _state: str
    _mutex: threading.Lock
    _cond: threading.Condition
    _ops: list[Any]
    _batch: int
    _committed: int
    _pending_since: float
    _urgent: bool
    _closing: bool
    _failure: BaseException | None
    _schedule_ops: list[tuple[str, str | None]]
    _schedules: dict[str, dict[str, Any]]  # the records by name (the writer reads them at open)
    commit_interval: float
    # The writer thread's own (set by the writer's ``_reset_writer()``).
    _taken_schedule_ops: list[tuple[str, str | None]]
    _unfolded: tuple[list[Op], int] | None
    _checkpoints: Checkpoints[Any]
    _encode: Callable[[Any], str]
    _commits: int
    _rows_written: int
    _rows_deleted: int
    _rows_skipped: int
    _reconnects: int
    _trio_encode: Callable[[Any], str]  # the Trio side's JSON encoder (the writer has its own)

    def _reset_writer(self) -> None:  # pragma: no cover - the writer base class's
        raise NotImplementedError

    def _open_database(self) -> list[StoredTask]:  # pragma: no cover - the writer base class's
        raise NotImplementedError

    def _open_error(self, exc: BaseException) -> StoreError:  # pragma: no cover - the writer base class's
        raise NotImplementedError

    def _write(self, batch: list[Op], schedule_ops: list[tuple[str, str | None]]) -> tuple[int, int, int]:
        """In the writer thread: commit ``batch`` as one change-log row, then ``schedule_ops``, in one transaction.

        Returns how many task changes it wrote, deleted and skipped, and sets
        ``_unfolded`` to ``(batch, seq)`` for the checkpoints.
        """
        raise NotImplementedError  # pragma: no cover - the writer base class's

    def _idle_checkpoint(self, closing: bool) -> bool:  # pragma: no cover - the writer base class's
        """In the writer thread, with nothing to commit: checkpoint work (all of it when closing).  True: stop."""
        raise NotImplementedError

    def _failed_error(self) -> StoreError:  # pragma: no cover - each store words its own
        raise NotImplementedError

    def _close_connection(self) -> None:  # pragma: no cover - each store's
        """In the writer thread, as it exits: close the connection and release any lock."""
        raise NotImplementedError

    @property
    def _journal_name(self) -> str:  # pragma: no cover - each store's
        raise NotImplementedError

    def _reset(self) -> None:
        self._reset_writer()  # what the writer thread owns, and what it shares with this side
        # The Trio side's.
        self._lots: dict[int, trio.lowlevel.ParkingLot] = {}  # batch number -> who waits for its commit
        self._opened = trio.Event()
        self._exited = trio.Event()
        self._open_outcome: list[StoredTask] | BaseException = []

    async def _open_thread(self, thread_name: str) -> list[StoredTask]:
        """Start the writer thread and wait until it opened the journal; the tasks to recover."""
        if self._state not in ("new", "closed"):
            raise RuntimeError(f"this {type(self).__name__} is {self._state}; open() it only when new or closed")
        self._reset()
        self._token = trio.lowlevel.current_trio_token()
        self._state = "opening"
        threading.Thread(target=self._run, name=thread_name, daemon=True).start()
        try:
            await self._opened.wait()
        except BaseException:
            self._begin_close()  # the thread finishes opening, then closes by itself
            self._state = "closing"
            raise
        outcome = self._open_outcome
        if isinstance(outcome, BaseException):
            self._state = "closed"
            raise outcome
        self._state = "open"
        self._open_outcome = []
        return outcome

    # ------------------------------------------------------------ buffering (the Trio side)
    async def add(self, tasks: list[StoredTask]) -> None:
        """Journal new tasks; return once they are committed (the same transaction as whatever else is buffered).

        Only for tasks the journal does not hold: new ones, or ones
        :meth:`forget` dropped before.  Raises TypeError/ValueError (nothing
        buffered) if a task cannot be encoded as JSON, :class:`StoreError`
        if the journal is broken.  If cancelled while waiting, the tasks stay
        buffered and are committed anyway.
        """
        self._check_open("add")
        dumps = self._trio_encode
        ops = []
        for task in tasks:  # encoded here, so that a bad task fails its own caller
            op = values(task)
            ops.append((ADDED, op[1], dumps(op[2])))
        await self._add(ops)

    async def add_new(self, tasks: list[NewTask]) -> None:
        """:meth:`add` for :data:`~trioschedule._store.base.NewTask` tuples, encoded as they are."""
        self._check_open("add")
        await self._add(new_rows(tasks, self._trio_encode))

    async def add_new_many(
        self, ids: list[str], args: list[Any], name: str, kwargs: dict[str, Any], priority: int, retries: int | None,
        deadline: float | None, not_before: float | None, submitted_at: float,
    ) -> None:  # fmt: skip
        """:meth:`add_new` for tasks that differ only in id and ``args``: one group, its shared fields once.

        Encoded here, in one call for the whole group (raises TypeError/ValueError,
        nothing buffered, if any of it cannot be).
        """
        self._check_open("add")
        if len(ids) != len(args):
            raise ValueError(f"{len(ids)} ids for {len(args)} argument lists")
        items: list[Any] = [None] * (2 * len(ids))
        items[::2], items[1::2] = ids, args
        text = self._trio_encode((name, kwargs, priority, retries, deadline, not_before, submitted_at, items))
        await self._add([(ACCEPTED, ids, text, {})] if ids else [])

    async def _add(self, ops: list[Op]) -> None:
        if not ops:
            await trio.lowlevel.checkpoint()
            return
        with self._mutex:
            self._raise_if_failed()
            if not self._ops:
                self._pending_since = time.monotonic()
            self._ops.extend(ops)
            self._urgent = True
            ticket = self._batch
            self._cond.notify()
        await self._wait_committed(ticket)

    def update(self, task: StoredTask) -> None:
        """Buffer ``task``'s new state (an upsert); the writer commits it within ``commit_interval``.

        The store keeps a reference to ``task`` until then: do not mutate it.
        """
        if self._state != "open":
            self._check_open("update")
        op = values(task)  # raises ValueError for a bad state; the writer encodes it
        ops = self._ops
        ops.append(op)
        if len(ops) == 1:
            self._wake_writer()

    def update_running(self, task_id: str, attempt: int, failures: int, losses: int, session: str) -> None:
        """Buffer "``task_id`` runs on ``session``" (see :meth:`Store.update_running`)."""
        if self._state != "open":
            self._check_open("update")
        ops = self._ops
        ops.append((RUN, task_id, session, attempt, failures, losses))
        if len(ops) == 1:
            self._wake_writer()

    def update_running_many(self, task_ids: list[str], attempt: int, failures: int, losses: int, session: str) -> None:
        """Buffer "these tasks run on ``session``", as one operation (the store keeps ``task_ids``)."""
        if self._state != "open":
            self._check_open("update")
        ops = self._ops
        ops.append((RUNS, task_ids, session, attempt, failures, losses))
        if len(ops) == 1:
            self._wake_writer()

    def update_done(
        self, task_id: str, attempt: int, failures: int, losses: int, outcome: dict[str, Any], finished_at: float
    ) -> None:
        """Buffer "``task_id`` ended with ``outcome``" (see :meth:`Store.update_done`).

        The store keeps a reference to ``outcome`` until it is committed: do not mutate it.
        """
        if self._state != "open":
            self._check_open("update")
        ops = self._ops
        ops.append((FINISH, task_id, attempt, outcome, finished_at, failures, losses))
        if len(ops) == 1:
            self._wake_writer()

    def forget(self, task_ids: list[str]) -> None:
        """Buffer the deletion of these tasks' rows (unknown ids are ignored)."""
        if self._state != "open":
            self._check_open("forget")
        if not task_ids:
            return
        ops = self._ops
        # One operation for many (a map() chunk's results): one append here, C-speed folds in the writer.
        ops.append((FORGET, task_ids[0]) if len(task_ids) == 1 else (FORGETS, list(task_ids)))
        if len(ops) == 1:
            self._wake_writer()

    # ------------------------------------------------------------ schedules (the Trio side)
    async def load_schedules(self) -> list[dict[str, Any]]:
        """The schedule records: those the journal held at open, with every change saved since."""
        self._check_open("load_schedules")
        await trio.lowlevel.checkpoint()
        return [dict(record) for _, record in sorted(self._schedules.items())]

    async def save_schedules(self, records: list[dict[str, Any]]) -> None:
        """Upsert the records by name; return once committed (with every task change buffered before).

        Raises TypeError/ValueError (nothing buffered) if a record has no str
        ``name`` or cannot be encoded as JSON, :class:`StoreError` if the
        journal is broken.
        """
        self._check_open("save_schedules")
        for record in records:
            if not isinstance(record.get("name"), str):
                raise TypeError(f"a schedule record needs a str 'name', not {record.get('name')!r}")
        dumps = self._trio_encode
        await self._schedule_change([(record["name"], dumps(record)) for record in records])
        for record in records:
            self._schedules[record["name"]] = record

    async def delete_schedule(self, name: str) -> None:
        """Drop the record ``name`` (no error if there is none); return once committed."""
        self._check_open("delete_schedule")
        await self._schedule_change([(name, None)])
        self._schedules.pop(name, None)

    async def _schedule_change(self, ops: list[tuple[str, str | None]]) -> None:
        if not ops:
            await trio.lowlevel.checkpoint()
            return
        with self._mutex:
            self._raise_if_failed()
            self._schedule_ops.extend(ops)
            ticket = self._batch
            self._cond.notify()
        await self._wait_committed(ticket)

    def statistics(self) -> StoreStatistics:
        """Counters since the last open(): commits, rows written/deleted/skipped, pending, checkpoints, reconnects."""
        with self._cond:
            return StoreStatistics(
                commits=self._commits,
                rows_written=self._rows_written,
                rows_deleted=self._rows_deleted,
                rows_skipped=self._rows_skipped,
                pending=len(self._ops),
                failed=self._failure is not None,
                checkpoints=self._checkpoints.count,
                reconnects=self._reconnects,
            )

    def _wake_writer(self) -> None:
        """The first operation of a batch was buffered: the writer commits within ``commit_interval``."""
        with self._mutex:
            self._pending_since = time.monotonic()
            self._cond.notify()

    def mark(self) -> int:
        """The batch that holds everything buffered so far (see :meth:`flush`)."""
        with self._mutex:
            return self._batch if self._ops else self._batch - 1  # the one the writer holds, if any

    async def flush(self, mark: int | None = None) -> None:
        """Return once everything buffered before this call is committed; with a :meth:`mark`, what was before it.

        A mark lets a caller wait for its own operations and not for those
        buffered since, which go into the next group commit (one commit later).
        """
        self._check_open("flush")
        with self._mutex:
            self._raise_if_failed()
            ticket = self._batch if self._ops else self._batch - 1
            if mark is not None and mark < ticket:
                ticket = mark
            elif ticket == self._batch:
                self._urgent = True
                self._cond.notify()
        await self._wait_committed(ticket)

    async def close(self) -> None:
        """Commit what is buffered and close the journal.

        Safe to call twice.  If cancelled, the writer thread still finishes
        (and releases what it holds) by itself.  Raises :class:`StoreError`
        if a write failed while the store was open.
        """
        if self._state in ("new", "closed"):
            await trio.lowlevel.checkpoint()
            return
        self._begin_close()
        self._state = "closing"
        await self._exited.wait()
        self._state = "closed"
        if self._failure is not None:
            raise self._failed_error()

    def _check_open(self, what: str) -> None:
        if self._state != "open":
            raise RuntimeError(
                f"{what}() on a {self._state} {type(self).__name__}: call open() first, and not after close()"
            )

    def _begin_close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failed_error()

    async def _wait_committed(self, ticket: int) -> None:
        if self._committed >= ticket:
            await trio.lowlevel.checkpoint()
            return
        while self._committed < ticket:
            if self._failure is not None:
                raise self._failed_error()
            if self._exited.is_set():
                raise StoreError(f"the journal {self._journal_name} was closed before the write was committed")
            lot = self._lots.get(ticket)
            if lot is None:
                lot = self._lots[ticket] = trio.lowlevel.ParkingLot()
            await lot.park()

    def _wake(self) -> None:
        """In the Trio thread, after a commit (or a failure): wake whoever waits for what is committed now."""
        lots = self._lots
        if self._failure is not None:
            ready = list(lots)
        else:
            committed = self._committed
            ready = [ticket for ticket in lots if ticket <= committed]
        for ticket in ready:
            lots.pop(ticket).unpark_all()

    def _thread_exited(self) -> None:
        self._opened.set()
        self._exited.set()
        for lot in self._lots.values():
            lot.unpark_all()
        self._lots.clear()

    def _call_soon(self, fn: Callable[[], None]) -> None:
        """From the writer thread: run ``fn`` in the Trio thread."""
        try:
            self._token.run_sync_soon(fn)
        except trio.RunFinishedError:
            pass  # nobody left to tell

    # ================================================= the writer thread's entry
    def _run(self) -> None:
        """The writer thread: open, then commit until closed; hands each outcome to the Trio side."""
        try:
            try:
                self._open_outcome = self._open_database()
            except BaseException as exc:  # noqa: BLE001 - every failure becomes the open() outcome
                self._open_outcome = exc if isinstance(exc, StoreError) else self._open_error(exc)
                return
            self._call_soon(self._opened.set)
            self._write_loop(lambda: self._call_soon(self._wake))
        except BaseException:  # pragma: no cover - a bug here; never let the thread die silently
            log.exception("the journal writer for %s crashed", self._journal_name)
            with self._cond:
                if self._failure is None:
                    self._failure = RuntimeError("the journal writer thread crashed")
        finally:
            self._close_connection()
            self._call_soon(self._thread_exited)

    def _write_loop(self, committed: Callable[[], None]) -> None:
        """Commit batches until closed; after each commit (or failure) call ``committed``, then fold it in."""
        while True:
            batch, number, closing = self._next_batch()
            schedule_ops, self._taken_schedule_ops = self._taken_schedule_ops, []
            if not batch and not schedule_ops:
                if self._idle_checkpoint(closing) or closing:
                    return
                continue
            try:
                written, deleted, skipped = self._write(batch, schedule_ops)
            except Exception as exc:  # noqa: BLE001 - any failure stops journaling, loudly
                if isinstance(exc, StoreFenced):
                    log.warning("%s", exc)
                else:
                    log.error("writing the journal %s failed; journaling stops: %r", self._journal_name, exc)
                with self._cond:
                    self._failure = exc
            else:
                with self._cond:
                    self._committed = number
                    self._commits += 1
                    self._rows_written += written
                    self._rows_deleted += deleted
                    self._rows_skipped += skipped
            committed()
            unfolded, self._unfolded = self._unfolded, None
            if unfolded is not None:  # after the wake-up: nobody waits for this
                self._checkpoints.fold(*unfolded)

    def _next_batch(self) -> tuple[list[Op], int, bool]:
        """Wait until there is something to do: a batch to commit (and its number), or checkpoint work, or closing.

        Schedule changes taken go to ``_taken_schedule_ops``, with the
        operations buffered before them.
        """
        cond = self._cond
        ops = self._ops
        with cond:
            while True:
                if self._failure is not None:
                    del ops[:]  # stopped: nothing more is written
                    del self._schedule_ops[:]
                    if self._closing:
                        return [], 0, True
                    cond.wait()
                elif self._schedule_ops:
                    break  # always urgent: someone waits for it
                elif ops:
                    if self._urgent or self._closing:
                        break
                    wait = self._pending_since + self.commit_interval - time.monotonic()
                    if wait <= 0:
                        break
                    cond.wait(wait)
                elif self._closing:
                    break
                else:
                    idle = self._checkpoints.due()
                    if idle is not None and idle <= 0:
                        break
                    cond.wait(idle)
            # The Trio side only ever appends: take what is there now.
            count = len(ops)
            batch = ops[:count]
            del ops[:count]
            self._taken_schedule_ops, self._schedule_ops = self._schedule_ops, []
            number = 0
            if batch or self._taken_schedule_ops:
                number = self._batch
                self._batch += 1
                self._urgent = False
            return batch, number, self._closing


def encodable(batch: list[Op], encode: Callable[[Any], str]) -> list[Op]:
    """``batch`` without (and logging) the operations that cannot be encoded as JSON."""
    good = []
    for op in batch:
        try:
            if op[0] == VALUES:
                encode(op[2])
            elif op[0] in (RUN, RUNS, FINISH, FORGET, FORGETS):
                encode(op)
        except (TypeError, ValueError) as exc:
            log.error("task %s: its state cannot be journaled and is skipped: %s", op[1], exc)
        else:
            good.append(op)
    return good


def encoded_batch(batch: list[Op], encode: Callable[[Any], str]) -> tuple[list[Op], str, int, int, int]:
    """``batch`` as the text of one change-log row: ``(operations kept, text, forgets, changes, skipped)``.

    An operation whose values cannot be encoded as JSON (an update's state
    from a user) is logged and left out, instead of failing the commit.
    """
    try:
        text, forgets, changes = changelog.segments_text(batch, encode)
    except (TypeError, ValueError):
        kept = encodable(batch, encode)
        text, forgets, changes = changelog.segments_text(kept, encode)
        return kept, text, forgets, changes, len(batch) - len(kept)
    return batch, text, forgets, changes, 0
