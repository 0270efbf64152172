"""The SQLite store's Trio side: what the dispatcher calls, from its own thread, without waiting for a disk.

It only appends operations (:mod:`.changelog`) to a list that the writer
thread (:mod:`.writer`, this class's base) takes from, and parks until the
writer says "committed".  Why a change log, group commit and checkpoints:
docs/STORE.md, which is also the contract every store keeps.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

import attrs
import trio

from ..._errors import StoreError
from ..._json import json_encoder
from ..base import NewTask, Store, StoredTask
from ..threaded import ThreadedJournal
from .changelog import ACCEPTED, ADDED, FINISH, FORGET, RUN, RUNS, Op, new_rows, values
from .writer import JournalWriter, log

__all__ = ["SQLiteStore", "StoreStatistics"]


@attrs.frozen(kw_only=True)
class StoreStatistics:
    """What :meth:`SQLiteStore.statistics` reports (counted since the last ``open()``).

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


class SQLiteStore(JournalWriter, ThreadedJournal, Store):
    """A journal in one SQLite file, so a restarted dispatcher recovers its tasks.

    ``path`` is the database file; ``PATH-wal``/``PATH-shm`` (SQLite's) and
    ``PATH.lock`` (ours) live beside it.  ``retention`` (seconds) drops
    finished tasks older than that at :meth:`open` and in the writer's
    periodic sweep; None keeps them until :meth:`forget`.  ``synchronous`` is
    SQLite's setting: ``"FULL"`` (default) makes each commit survive a power
    cut, ``"NORMAL"`` only a crash of this process (faster, still
    consistent).  ``commit_interval`` is how long buffered updates may wait
    for company before the writer commits them; :meth:`add` and
    :meth:`flush` never wait for it.
    """

    durable = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        retention: float | None = None,
        synchronous: str = "FULL",
        commit_interval: float = 0.005,
    ) -> None:
        path = os.fspath(path)
        if not path or path == ":memory:" or path.startswith("file:"):
            raise ValueError(f"SQLiteStore needs a file path, not {path!r} (use 'memory:' to keep nothing)")
        if retention is not None and not retention >= 0:
            raise ValueError("retention must be a number of seconds >= 0, or None")
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError("synchronous must be 'NORMAL', 'FULL' or 'EXTRA'")
        if not commit_interval >= 0:
            raise ValueError("commit_interval must be >= 0")
        self.path = path
        self.url = "sqlite:" + path
        self.retention = retention
        self.synchronous = synchronous.upper()
        self.commit_interval = commit_interval
        self._state = "new"  # new -> opening -> open -> closing -> closed (-> opening again)
        self._trio_encode = json_encoder(check_circular=True)  # the Trio side's (the writer has its own)
        self._reset()

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path!r} {self._state}>"

    # ============================================================ Trio side
    async def open(self) -> list[StoredTask]:
        """Lock the journal, check and migrate it, and return the tasks to recover.

        Raises :class:`StoreError` if another dispatcher holds the journal,
        if it was written by a newer trioschedule, or if it is corrupt or not
        a trioschedule journal; nothing is changed in those cases.
        """
        return await self._open_thread(f"trioschedule-sqlite:{self.path}")

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
        ops = self._ops
        was_empty = not ops
        for task_id in task_ids:
            ops.append((FORGET, task_id))
        if was_empty and ops:
            self._wake_writer()

    # ------------------------------------------------------------ schedules
    async def load_schedules(self) -> list[dict[str, Any]]:
        """The schedule records the journal held when it was opened."""
        self._check_open("load_schedules")
        await trio.lowlevel.checkpoint()
        return [dict(record) for record in self._schedules]

    async def save_schedules(self, records: list[dict[str, Any]]) -> None:
        """Upsert the records by name; return once committed (with every task change buffered before).

        Raises TypeError/ValueError (nothing buffered) if a record cannot be
        encoded as JSON, :class:`StoreError` if the journal is broken.
        """
        self._check_open("save_schedules")
        dumps = self._trio_encode
        ops: list[tuple[str, str | None]] = [(str(record["name"]), dumps(record)) for record in records]
        await self._schedule_change(ops)

    async def delete_schedule(self, name: str) -> None:
        """Drop the record ``name`` (if any); return once committed."""
        self._check_open("delete_schedule")
        await self._schedule_change([(name, None)])

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
        """Counters since the last open(): commits, rows written/deleted/skipped, pending ops."""
        with self._cond:
            return StoreStatistics(
                commits=self._commits,
                rows_written=self._rows_written,
                rows_deleted=self._rows_deleted,
                rows_skipped=self._rows_skipped,
                pending=len(self._ops),
                failed=self._failure is not None,
                checkpoints=self._checkpoints.count,
            )

    def _failed_error(self) -> StoreError:
        error = StoreError(
            f"writing the journal {self.path} failed ({self._failure!r}), so this dispatcher stopped journaling; "
            "changes since the last successful commit are lost.  Fix the cause (disk full? file removed?) "
            "and restart: the journal holds every commit made before the failure",
            code="io",
        )
        error.__cause__ = self._failure
        return error

    @property
    def _journal_name(self) -> str:
        return self.path

    def _close_connection(self) -> None:
        """In the writer thread, as it exits: close the database and release the journal's lock file."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:  # pragma: no cover
                log.exception("closing %s failed", self.path)
        self._lock.release()
