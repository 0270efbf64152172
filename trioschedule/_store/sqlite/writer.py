"""The writer thread's half of the SQLite store: it owns the connection and does every SQLite call.

Why a thread of its own: SQLite calls block on the disk, and the event loop
must never wait for a disk.  Why group commit: a commit costs an fsync, so
everything that arrives while the writer is busy goes into the *next*
transaction, as one row of the change log (:mod:`..changelog`).

:class:`JournalWriter` is the base class of :class:`~.store.SQLiteStore`;
the two halves share only the fields :meth:`JournalWriter._reset_writer`
declares, under ``_mutex`` unless it says otherwise.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from typing import Any

from ..._errors import StoreError
from ..._json import json_encoder
from .. import changelog
from ..base import StoredTask
from ..changelog import Op
from ..generation import Checkpoints, Generation
from ..threaded import encodable, encoded_batch
from . import schema
from .checkpoint import SQLiteCheckpoints, apply_net
from .lockfile import LockFile

__all__ = ["JournalWriter"]

log = logging.getLogger("trioschedule.store")

# Unfinished tasks in submission order, then finished ones oldest first (the
# dispatcher expires outcomes from the front of that list).
_LOAD = "SELECT task FROM tasks ORDER BY state = 'done', finished_at, seq"
_PURGE = "DELETE FROM tasks WHERE state = 'done' AND finished_at < ?"
_LOG = "INSERT INTO changes (ops) VALUES (?)"
_PURGE_EVERY = 60.0  # seconds between the writer's retention sweeps
_LOAD_SCHEDULES = "SELECT name, record FROM schedules"
_SAVE_SCHEDULE = (
    "INSERT INTO schedules (name, record) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET record = excluded.record"
)
_DELETE_SCHEDULE = "DELETE FROM schedules WHERE name = ?"


class JournalWriter:
    """What the writer thread does: open and recover the journal, then commit batches until closed."""

    # Set by SQLiteStore.__init__.
    path: str
    retention: float | None
    synchronous: str
    commit_interval: float

    def _reset_writer(self) -> None:
        # Shared with the Trio side.  It appends to ``_ops`` (one list.append,
        # atomic, no lock) and the writer takes a prefix of it under ``_mutex``;
        # everything else here only under ``_mutex``.
        self._mutex = threading.Lock()  # the hot paths take the plain lock; waiting goes through _cond
        self._cond = threading.Condition(self._mutex)
        self._ops: list[Op] = []
        # Schedule records to write, ``(name, text)`` (text None: delete), in order.  Appended
        # under ``_mutex`` after the task operations they follow, and taken with them, so a
        # commit never holds a schedule change without the task changes made before it.
        self._schedule_ops: list[tuple[str, str | None]] = []
        self._schedules: dict[str, dict[str, Any]] = {}  # by name: read at open, then the Trio side's
        self._pending_since = 0.0  # time.monotonic() of the first operation buffered
        self._urgent = False  # someone awaits the next commit: do not wait for company
        self._closing = False
        self._batch = 1  # the number of the batch being collected
        self._committed = 0  # the last batch number committed (read without the lock: one int)
        self._failure: BaseException | None = None
        self._commits = self._rows_written = self._rows_deleted = self._rows_skipped = 0
        self._reconnects = 0  # (a file is never reconnected to; counted for StoreStatistics alike)
        # The writer thread's own.
        self._conn: sqlite3.Connection | None = None
        self._lock = LockFile(self.path + ".lock", self.path)
        self._next_purge = 0.0
        self._taken_schedule_ops: list[tuple[str, str | None]] = []  # taken with the batch being written
        self._encode = json_encoder(check_circular=True)  # values from users: refuse circular ones
        self._unfolded: tuple[list[Op], int] | None = None  # a committed batch not folded yet
        self._checkpoints: Checkpoints[Any] = SQLiteCheckpoints(self._encode)  # its ``count`` is read by statistics()

    # ------------------------------------------------------------ opening
    def _open_database(self) -> list[StoredTask]:
        """Lock, check, migrate and recover the journal; the tasks it holds."""
        self._lock.acquire()
        conn = self._conn = schema.connect(self.path)
        schema.prepare(conn, self.path, self.synchronous)
        # Recovery: what the change log holds after the last checkpoint, applied
        # in commit order on top of ``tasks``, then the retention sweep; in one
        # transaction, so that a journal refused half-way is left as it was.
        pending = conn.execute("SELECT count(*) FROM changes").fetchone()[0]
        if pending or self.retention is not None:
            with schema.transaction(conn):
                if pending:
                    self._replay(conn)
                    conn.execute("DELETE FROM changes")
                    log.info("%s: applied %d commit(s) from the change log", self.path, pending)
                if self.retention is not None:
                    conn.execute(_PURGE, (time.time() - self.retention,))
        if self.retention is not None:
            self._next_purge = time.monotonic() + _PURGE_EVERY
        try:
            self._schedules = {row[0]: json.loads(row[1]) for row in conn.execute(_LOAD_SCHEDULES)}
        except ValueError as exc:
            raise schema.corrupt(self.path, f"a schedule record does not decode ({exc})") from exc
        try:
            return [changelog.decode(row[0]) for row in conn.execute(_LOAD)]
        except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
            raise schema.corrupt(self.path, f"a task does not decode ({exc})") from exc

    def _replay(self, conn: sqlite3.Connection) -> None:
        """Apply the change log on top of ``tasks``: the commits since the last finished checkpoint, in order."""
        generation = Generation()
        try:
            for (text,) in conn.execute("SELECT ops FROM changes ORDER BY seq"):
                generation.fold(changelog.recovered(text), self._encode)
        except (ValueError, TypeError, IndexError) as exc:  # JSONDecodeError is a ValueError
            raise schema.corrupt(self.path, f"its change log does not decode ({exc})") from exc
        apply_net(conn, generation.net(generation.latest, self._encode))

    def _open_error(self, exc: BaseException) -> StoreError:
        """What ``open()`` raises for ``exc``: always a StoreError that says what to do."""
        if isinstance(exc, sqlite3.Error) and schema.is_corruption(exc):
            return schema.corrupt(self.path, str(exc))
        if isinstance(exc, json.JSONDecodeError):
            return schema.corrupt(self.path, f"a row holds invalid JSON ({exc})")
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        error = StoreError(f"cannot open the journal {self.path}: {text}", code="io")
        error.__cause__ = exc
        return error

    # ------------------------------------------------------------ committing
    def _idle_checkpoint(self, closing: bool) -> bool:
        """Nothing to commit: bring ``tasks`` up to date (all of it when closing).  True: stop the writer."""
        if self._failure is not None:
            return closing  # stopped: nothing more is written, not even a checkpoint
        try:
            self._checkpoints.run(self._connection(), everything=closing)
        except Exception as exc:  # noqa: BLE001 - nothing is lost: the change log still holds it all
            log.warning("checkpoint of the journal %s failed (its change log keeps everything): %r", self.path, exc)
            if closing:
                return True
            with self._cond:
                self._failure = exc  # something is wrong with the file: stop writing to it
        return False

    def _connection(self) -> sqlite3.Connection:
        conn = self._conn
        assert conn is not None
        return conn

    def _write(self, batch: list[Op], schedule_ops: list[tuple[str, str | None]]) -> tuple[int, int, int]:
        """Commit ``batch`` as one row of the change log (with a slice of checkpoint, if one is under way).

        Returns how many task changes were written, deleted (forgets and the
        retention sweep) and skipped (not encodable).
        """
        if schedule_ops:
            return self._write_schedules(batch, schedule_ops)
        conn = self._connection()
        batch, text, forgets, changes, skipped = encoded_batch(batch, self._encode)
        checkpoints = self._checkpoints
        entries, last = checkpoints.slice_for_commit(len(batch))
        retention = self.retention
        purge = retention is not None and time.monotonic() >= self._next_purge
        purged = 0
        if entries or last or purge:
            with schema.transaction(conn):
                seq = conn.execute(_LOG, (text,)).lastrowid or 0
                checkpoints.apply_slice(conn, entries, last)
                if retention is not None and purge:
                    purged = max(conn.execute(_PURGE, (time.time() - retention,)).rowcount, 0)
            if purge:
                self._next_purge = time.monotonic() + _PURGE_EVERY
            checkpoints.sliced(last)
        else:
            # One statement is its own transaction: one call into SQLite (one hand-back
            # of the GIL, which a busy event loop may keep for a while) instead of three.
            seq = conn.execute(_LOG, (text,)).lastrowid or 0
        self._unfolded = (batch, seq)  # folded once the waiters are woken (see _write_loop)
        return changes - forgets, forgets + purged, skipped

    def _write_schedules(self, batch: list[Op], schedule_ops: list[tuple[str, str | None]]) -> tuple[int, int, int]:
        """Commit ``batch`` (as :meth:`_write` does, counts alike) and the schedule changes after it, in one transaction.

        Rare (a schedule's record changes when it fires), so no checkpoint slice rides along.
        """
        conn = self._connection()
        forgets = changes = 0
        count = len(batch)
        with schema.transaction(conn):
            batch = encodable(batch, self._encode)
            if batch:
                text, forgets, changes = changelog.segments_text(batch, self._encode)
                seq = conn.execute(_LOG, (text,)).lastrowid or 0
                self._unfolded = (batch, seq)
            for name, record in schedule_ops:
                if record is None:
                    conn.execute(_DELETE_SCHEDULE, (name,))
                else:
                    conn.execute(_SAVE_SCHEDULE, (name, record))
        return changes - forgets, forgets, count - len(batch)
