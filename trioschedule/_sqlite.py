"""A durable store: an SQLite journal in WAL mode, written by one dedicated thread.

Why a thread of its own: SQLite calls block on the disk, and the event loop
must never wait for a disk.  So every SQLite call happens on one long-lived
writer thread that owns the connection; the Trio side only touches an
in-memory buffer under a lock and parks until the writer says "committed".

Why group commit: a commit costs an fsync, and a dispatcher changes task
states tens of thousands of times a second.  Everything that arrives while
the writer is busy (any number of :meth:`SQLiteStore.add` batches, buffered
updates and deletes) goes into the *next* transaction, and within a batch only
the latest state of each task is written.  The contract every store keeps, and
how this one keeps it, is in docs/STORE.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Union

import attrs
import trio

from ._errors import TriosError
from ._store import Store, StoredTask

__all__ = ["MIGRATIONS", "Migration", "SQLiteStore", "StoreError", "StoreStatistics"]

log = logging.getLogger("trioschedule.store")

#: ``PRAGMA application_id`` of a trioschedule journal ("trio"), so that a
#: stray SQLite file of some other program is never mistaken for one.
APPLICATION_ID = 0x7472696F

_STATES = frozenset(("queued", "running", "done"))
_HEADER = b"SQLite format 3\x00"
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


class StoreError(TriosError):
    """The journal cannot be used; the message says why and what to do.

    ``code`` names the problem: ``"locked"`` (another dispatcher uses it),
    ``"newer-version"``, ``"not-a-journal"``, ``"corrupt"``, ``"unsupported"``
    (the filesystem cannot do what the journal needs), ``"io"`` (opening or
    writing failed).
    """

    def __init__(self, message: str, *, code: str = "io") -> None:
        super().__init__(message)
        self.code = code


@attrs.frozen(kw_only=True)
class StoreStatistics:
    """What :meth:`SQLiteStore.statistics` reports (counted since the last ``open()``).

    ``commits`` counts the writer's transactions (the schema set-up at open
    is not counted); ``rows_written``/``rows_deleted`` the rows they upserted
    and deleted; ``rows_skipped`` buffered updates that could not be encoded
    as JSON (each one is logged); ``pending`` the operations buffered and not
    yet handed to the writer; ``failed`` whether a write failed, which stops
    the store (see :class:`StoreError`).
    """

    commits: int
    rows_written: int
    rows_deleted: int
    rows_skipped: int
    pending: int
    failed: bool


@attrs.frozen(kw_only=True)
class Migration:
    """One step of the journal's schema history: it turns version ``version - 1`` into ``version``.

    ``steps`` are SQL statements or functions of the connection, run in
    order inside the transaction that also sets ``PRAGMA user_version``.
    """

    version: int
    description: str
    steps: tuple[str | Callable[[sqlite3.Connection], None], ...]


# The schema as a history.  A file at version v gets every step after v, in
# one transaction; a file newer than the last step is refused.  To change the
# schema, append a Migration (never edit a released one) and update the
# statements below that name columns.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="create the tasks table",
        steps=(
            """
            CREATE TABLE tasks (
                seq INTEGER PRIMARY KEY,        -- insertion order: recovery requeues in it
                id TEXT NOT NULL UNIQUE,
                name TEXT NOT NULL,
                args TEXT NOT NULL,             -- JSON array
                kwargs TEXT NOT NULL,           -- JSON object
                priority INTEGER NOT NULL,
                retries INTEGER,
                deadline REAL,                  -- wall clock (time.time())
                not_before REAL,                -- wall clock
                state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done')),
                attempt INTEGER NOT NULL,
                failures INTEGER NOT NULL,
                losses INTEGER NOT NULL,
                session TEXT,
                outcome TEXT,                   -- JSON object, once done
                submitted_at REAL NOT NULL,
                finished_at REAL
            )
            """,
            "CREATE INDEX tasks_finished ON tasks (finished_at) WHERE state = 'done'",
        ),
    ),
)

_COLUMNS = (
    "id, name, args, kwargs, priority, retries, deadline, not_before, state, attempt, failures, losses, "
    "session, outcome, submitted_at, finished_at"
)
_UPSERT = (
    f"INSERT INTO tasks ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET name = excluded.name, args = excluded.args, kwargs = excluded.kwargs, "
    "priority = excluded.priority, retries = excluded.retries, deadline = excluded.deadline, "
    "not_before = excluded.not_before, state = excluded.state, attempt = excluded.attempt, "
    "failures = excluded.failures, losses = excluded.losses, session = excluded.session, "
    "outcome = excluded.outcome, submitted_at = excluded.submitted_at, finished_at = excluded.finished_at"
)
# Unfinished tasks in submission order, then finished ones oldest first (the
# dispatcher expires outcomes from the front of that list).
_LOAD = f"SELECT {_COLUMNS} FROM tasks ORDER BY state = 'done', finished_at, seq"
_PURGE = "DELETE FROM tasks WHERE state = 'done' AND finished_at < ?"
_PURGE_EVERY = 60.0  # seconds between the writer's retention sweeps

# A buffered operation: an encoded row (from add), a StoredTask to encode
# (from update), or None (a delete, from forget).
_Op = Union[tuple[Any, ...], StoredTask, None]


def _encode(task: StoredTask) -> tuple[Any, ...]:
    if task.state not in _STATES:
        raise ValueError(f"task {task.id!r}: state {task.state!r} is not one of {sorted(_STATES)}")
    return (
        task.id, task.name, _dumps(task.args) if task.args else "[]", _dumps(task.kwargs) if task.kwargs else "{}",
        task.priority, task.retries, task.deadline, task.not_before, task.state, task.attempt, task.failures,
        task.losses, task.session, None if task.outcome is None else _dumps(task.outcome), task.submitted_at,
        task.finished_at,
    )  # fmt: skip


def _decode(row: tuple[Any, ...]) -> StoredTask:
    (task_id, name, args, kwargs, priority, retries, deadline, not_before, state, attempt, failures, losses,
     session, outcome, submitted_at, finished_at) = row  # fmt: skip
    return StoredTask(
        id=task_id, name=name, args=json.loads(args), kwargs=json.loads(kwargs), priority=priority,
        retries=retries, deadline=deadline, not_before=not_before, state=state, attempt=attempt,
        failures=failures, losses=losses, session=session, outcome=None if outcome is None else json.loads(outcome),
        submitted_at=submitted_at, finished_at=finished_at,
    )  # fmt: skip


def _is_corruption(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "")  # Python 3.11+
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return True
    text = str(exc)
    return "not a database" in text or "malformed" in text


class _LockFile:
    """An exclusive, non-blocking lock on ``PATH.lock`` holding the owner's pid.

    ``flock`` belongs to the open file description, so the kernel drops it
    when its process dies (no stale locks to clean up), and a second open in
    the same process conflicts too.  The file is never deleted: unlinking a
    lock file races with whoever is about to lock it.
    """

    def __init__(self, path: str, journal: str) -> None:
        self.path = path
        self.journal = journal
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise StoreError(f"cannot create the lock file {self.path}: {exc.strerror or exc}") from exc
        try:
            _lock_nowait(fd)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "pid unknown"
            raise StoreError(
                f"the journal {self.journal} is in use by another running dispatcher ({who}, lock file {self.path}); "
                "stop that dispatcher first, or give this one a journal of its own (--store sqlite:OTHER_PATH)",
                code="locked",
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StoreError(
                f"cannot lock {self.path}: {exc.strerror or exc}; keep the journal on a local filesystem",
                code="unsupported",
            ) from exc
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the pid is a courtesy for error messages; the lock is what counts
        self.fd = fd

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)  # drops the lock


if sys.platform == "win32":  # pragma: no cover - lock one byte far past the pid, which stays readable
    import msvcrt

    def _lock_nowait(fd: int) -> None:
        os.lseek(fd, 1 << 30, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except PermissionError as exc:
            raise BlockingIOError(str(exc)) from exc

else:
    import fcntl

    def _lock_nowait(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return int(os.read(fd, 32).split()[0])
    except (OSError, ValueError, IndexError):
        return None


class SQLiteStore(Store):
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
        self._cond = threading.Condition(threading.Lock())
        self._reset()

    def _reset(self) -> None:
        # Shared with the writer thread: only under self._cond.
        self._pending: dict[str, _Op] = {}
        self._pending_since = 0.0
        self._urgent = False  # someone awaits the next commit: do not wait for company
        self._closing = False
        self._batch = 1  # the number of the batch being collected
        self._committed = 0  # the last batch number committed (read without the lock: one int)
        self._failure: BaseException | None = None
        self._commits = self._rows_written = self._rows_deleted = self._rows_skipped = 0
        # The Trio side's.
        self._lot = trio.lowlevel.ParkingLot()
        self._opened = trio.Event()
        self._exited = trio.Event()
        self._open_outcome: list[StoredTask] | BaseException = []
        # The writer thread's.
        self._conn: sqlite3.Connection | None = None
        self._lock = _LockFile(self.path + ".lock", self.path)
        self._next_purge = 0.0

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path!r} {self._state}>"

    # ============================================================ Trio side
    async def open(self) -> list[StoredTask]:
        """Lock the journal, check and migrate it, and return the tasks to recover.

        Raises :class:`StoreError` if another dispatcher holds the journal,
        if it was written by a newer trioschedule, or if it is corrupt or not
        a trioschedule journal; nothing is changed in those cases.
        """
        if self._state not in ("new", "closed"):
            raise RuntimeError(f"this SQLiteStore is {self._state}; open() it only when new or closed")
        self._reset()
        self._token = trio.lowlevel.current_trio_token()
        self._state = "opening"
        threading.Thread(target=self._run, name=f"trioschedule-sqlite:{self.path}", daemon=True).start()
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

    async def add(self, tasks: list[StoredTask]) -> None:
        """Journal new tasks; return once they are committed (the same transaction as whatever else is buffered).

        Raises TypeError/ValueError (nothing buffered) if a task cannot be
        encoded as JSON, :class:`StoreError` if the journal is broken.  If
        cancelled while waiting, the tasks stay buffered and are committed
        anyway.
        """
        self._check_open("add")
        rows = [_encode(task) for task in tasks]  # here, so that a bad task fails its own caller
        if not rows:
            await trio.lowlevel.checkpoint()
            return
        with self._cond:
            self._raise_if_failed()
            pending = self._pending
            if not pending:
                self._pending_since = time.monotonic()
            for row in rows:
                pending[row[0]] = row
            self._urgent = True
            ticket = self._batch
            self._cond.notify()
        await self._wait_committed(ticket)

    def update(self, task: StoredTask) -> None:
        """Buffer ``task``'s new state (an upsert); the writer commits it within ``commit_interval``.

        Only the latest state of each task per transaction is written.  The
        store keeps a reference to ``task`` until then: do not mutate it.
        """
        if self._state != "open":
            self._check_open("update")
        if task.state not in _STATES:
            raise ValueError(f"task {task.id!r}: state {task.state!r} is not one of {sorted(_STATES)}")
        with self._cond:
            pending = self._pending
            if not pending:
                if self._failure is not None:
                    return  # the store has stopped; add(), flush() and close() report it
                self._pending_since = time.monotonic()
                self._cond.notify()
            pending[task.id] = task

    def forget(self, task_ids: list[str]) -> None:
        """Buffer the deletion of these tasks' rows (unknown ids are ignored)."""
        self._check_open("forget")
        with self._cond:
            if self._failure is not None or not task_ids:
                return
            pending = self._pending
            if not pending:
                self._pending_since = time.monotonic()
                self._cond.notify()
            for task_id in task_ids:
                pending[task_id] = None

    async def flush(self) -> None:
        """Return once everything buffered before this call is committed."""
        self._check_open("flush")
        with self._cond:
            self._raise_if_failed()
            if self._pending:
                ticket = self._batch
                self._urgent = True
                self._cond.notify()
            else:
                ticket = self._batch - 1  # a batch the writer holds, if any
        await self._wait_committed(ticket)

    async def close(self) -> None:
        """Commit what is buffered, close the database and release the lock.

        Safe to call twice.  If cancelled, the writer thread still finishes
        (and releases the lock) by itself.  Raises :class:`StoreError` if a
        write failed while the store was open.
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

    def statistics(self) -> StoreStatistics:
        """Counters since the last open(): commits, rows written/deleted/skipped, pending ops."""
        with self._cond:
            return StoreStatistics(
                commits=self._commits,
                rows_written=self._rows_written,
                rows_deleted=self._rows_deleted,
                rows_skipped=self._rows_skipped,
                pending=len(self._pending),
                failed=self._failure is not None,
            )

    def _check_open(self, what: str) -> None:
        if self._state != "open":
            raise RuntimeError(f"{what}() on a {self._state} SQLiteStore: call open() first, and not after close()")

    def _begin_close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failed_error()

    def _failed_error(self) -> StoreError:
        error = StoreError(
            f"writing the journal {self.path} failed ({self._failure!r}), so this dispatcher stopped journaling; "
            "changes since the last successful commit are lost.  Fix the cause (disk full? file removed?) "
            "and restart: the journal holds every commit made before the failure",
            code="io",
        )
        error.__cause__ = self._failure
        return error

    async def _wait_committed(self, ticket: int) -> None:
        if self._committed >= ticket:
            await trio.lowlevel.checkpoint()
            return
        while self._committed < ticket:
            if self._failure is not None:
                raise self._failed_error()
            if self._exited.is_set():
                raise StoreError(f"the journal {self.path} was closed before the write was committed")
            await self._lot.park()

    def _wake(self) -> None:
        self._lot.unpark_all()

    def _thread_exited(self) -> None:
        self._opened.set()
        self._exited.set()
        self._lot.unpark_all()

    def _call_soon(self, fn: Callable[[], None]) -> None:
        """From the writer thread: run ``fn`` in the Trio thread."""
        try:
            self._token.run_sync_soon(fn)
        except trio.RunFinishedError:
            pass  # nobody left to tell

    # ======================================================== writer thread
    def _run(self) -> None:
        try:
            try:
                self._open_outcome = self._open_database()
            except BaseException as exc:
                self._open_outcome = exc if isinstance(exc, StoreError) else self._open_error(exc)
                return
            self._call_soon(self._opened.set)
            self._write_loop()
        except BaseException:  # pragma: no cover - a bug here; never let the thread die silently
            log.exception("the journal writer for %s crashed", self.path)
            with self._cond:
                if self._failure is None:
                    self._failure = RuntimeError("the journal writer thread crashed")
        finally:
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error:  # pragma: no cover
                    log.exception("closing %s failed", self.path)
            self._lock.release()
            self._call_soon(self._thread_exited)

    def _open_error(self, exc: BaseException) -> StoreError:
        if isinstance(exc, sqlite3.Error) and _is_corruption(exc):
            return self._corrupt(str(exc))
        if isinstance(exc, json.JSONDecodeError):
            return self._corrupt(f"a row holds invalid JSON ({exc})")
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        error = StoreError(f"cannot open the journal {self.path}: {text}", code="io")
        error.__cause__ = exc
        return error

    def _corrupt(self, detail: str) -> StoreError:
        return StoreError(
            f"the journal {self.path} is corrupt ({detail}).  Move it away (with {self.path}-wal and "
            f"{self.path}-shm if they exist) and restore it from a backup, or start with an empty journal "
            "and lose its tasks",
            code="corrupt",
        )

    def _open_database(self) -> list[StoredTask]:
        self._lock.acquire()
        try:
            with open(self.path, "rb") as file:
                header = file.read(len(_HEADER))
        except FileNotFoundError:
            header = b""
        if header and header != _HEADER:
            raise self._corrupt("it is not an SQLite database")
        conn = self._conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        latest = _check_migrations(MIGRATIONS)
        if app_id not in (0, APPLICATION_ID):
            raise StoreError(
                f"{self.path} is an SQLite database of another program (application_id {app_id:#x}), "
                "not a trioschedule journal; give the dispatcher a path of its own",
                code="not-a-journal",
            )
        if app_id == 0 and (version or conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]):
            raise StoreError(
                f"{self.path} holds an SQLite database that is not a trioschedule journal; "
                "give the dispatcher a path of its own",
                code="not-a-journal",
            )
        if version > latest:
            raise StoreError(
                f"the journal {self.path} has format version {version}, written by a newer trioschedule; this one "
                f"reads versions up to {latest}.  Run the newer trioschedule on it (it drains and migrates), "
                "or move the file away to start with an empty journal",
                code="newer-version",
            )
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise self._corrupt("; ".join(problems).replace("\n", "; "))
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(
                f"cannot put {self.path} in WAL mode (it stays {mode!r}); keep the journal on a local filesystem",
                code="unsupported",
            )
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        if version < latest:
            self._migrate(conn, version)
        if self.retention is not None:
            with _transaction(conn):
                conn.execute(_PURGE, (time.time() - self.retention,))
            self._next_purge = time.monotonic() + _PURGE_EVERY
        return [_decode(row) for row in conn.execute(_LOAD)]

    def _migrate(self, conn: sqlite3.Connection, version: int) -> None:
        with _transaction(conn):
            for migration in MIGRATIONS:
                if migration.version <= version:
                    continue
                log.info("migrating %s to format version %d: %s", self.path, migration.version, migration.description)
                for step in migration.steps:
                    if isinstance(step, str):
                        conn.execute(step)
                    else:
                        step(conn)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {MIGRATIONS[-1].version}")

    def _write_loop(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while True:
                    if self._failure is not None:
                        self._pending.clear()  # stopped: nothing more is written
                        if self._closing:
                            return
                        cond.wait()
                    elif self._pending:
                        if self._urgent or self._closing:
                            break
                        wait = self._pending_since + self.commit_interval - time.monotonic()
                        if wait <= 0:
                            break
                        cond.wait(wait)
                    elif self._closing:
                        return
                    else:
                        cond.wait()
                batch, self._pending = self._pending, {}
                number = self._batch
                self._batch += 1
                self._urgent = False
            try:
                counts = self._write(batch)
            except Exception as exc:
                log.error("writing the journal %s failed; journaling stops: %r", self.path, exc)
                with cond:
                    self._failure = exc
            else:
                with cond:
                    self._committed = number
                    self._commits += 1
                    self._rows_written += counts[0]
                    self._rows_deleted += counts[1]
                    self._rows_skipped += counts[2]
            self._call_soon(self._wake)

    def _write(self, batch: dict[str, _Op]) -> tuple[int, int, int]:
        conn = self._conn
        assert conn is not None
        rows: list[tuple[Any, ...]] = []
        deletes: list[tuple[str]] = []
        skipped = 0
        for task_id, op in batch.items():
            if op is None:
                deletes.append((task_id,))
            elif isinstance(op, tuple):
                rows.append(op)
            else:
                try:
                    rows.append(_encode(op))
                except (TypeError, ValueError) as exc:
                    log.error("task %s: its state cannot be journaled and is skipped: %s", task_id, exc)
                    skipped += 1
        deleted = 0
        with _transaction(conn):
            if rows:
                conn.executemany(_UPSERT, rows)
            if deletes:
                deleted += conn.executemany("DELETE FROM tasks WHERE id = ?", deletes).rowcount
            if self.retention is not None and time.monotonic() >= self._next_purge:
                deleted += conn.execute(_PURGE, (time.time() - self.retention,)).rowcount
                self._next_purge = time.monotonic() + _PURGE_EVERY
        return len(rows), max(deleted, 0), skipped


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; ``ROLLBACK`` if the block or the commit itself fails."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:  # pragma: no cover - the original error matters more
                pass
        raise


def _check_migrations(migrations: tuple[Migration, ...]) -> int:
    """The latest version; the history must be numbered 1, 2, 3... with no gaps."""
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise RuntimeError(f"MIGRATIONS[{expected - 1}] has version {migration.version}, expected {expected}")
    return len(migrations)
