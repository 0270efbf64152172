"""The SQLite store's Trio side: what the dispatcher calls, from its own thread, without waiting for a disk.

It only appends operations (:mod:`..changelog`) to a list that the writer
thread (:mod:`.writer`, this class's base) takes from, and parks until the
writer says "committed".  Why a change log, group commit and checkpoints:
docs/STORE.md, which is also the contract every store keeps.
"""

from __future__ import annotations

import os
import sqlite3

from ..._errors import StoreError
from ..._json import json_encoder
from ..base import Store, StoredTask
from ..threaded import StoreStatistics, ThreadedJournal
from .writer import JournalWriter, log

__all__ = ["SQLiteStore", "StoreStatistics"]



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
