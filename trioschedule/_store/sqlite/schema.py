"""The journal file: recognising it, its schema's history, and migrating it forward.

A journal carries ``PRAGMA application_id`` :data:`APPLICATION_ID`, so that
another program's SQLite file is never mistaken for one, and ``PRAGMA
user_version`` = its format version, the number of the last of
:data:`MIGRATIONS` applied to it.  :func:`prepare` refuses what it cannot use
safely (with a :class:`~trioschedule.StoreError` that says what to do) before
changing anything, and migrates an older file in one transaction.

Everything here runs on the writer thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator

import attrs

from ..._errors import StoreError
from ..._json import json_encoder

__all__ = [
    "APPLICATION_ID", "MIGRATIONS", "Migration", "check_migrations", "connect", "corrupt", "is_corruption",
    "prepare", "transaction",
]  # fmt: skip

_log = logging.getLogger("trioschedule.store")

#: ``PRAGMA application_id`` of a trioschedule journal ("trio").
APPLICATION_ID = 0x7472696F

_HEADER = b"SQLite format 3\x00"
# SQLite copies the WAL into the database every this many pages, inside some commit;
# 16 MB instead of 4: fewer of those pauses, and a page the change log reuses is copied once.
_WAL_AUTOCHECKPOINT = 4000


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
# schema, append a Migration (never edit a released one, not even its SQL's
# comments) and update the statements that name columns (.checkpoint, .writer).
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
    Migration(
        version=2,
        description="one JSON array per task, and the change log that commits append to",
        steps=(
            """
            CREATE TABLE tasks_v2 (
                seq INTEGER PRIMARY KEY,        -- insertion order: recovery requeues in it
                id TEXT NOT NULL UNIQUE,
                state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done')),
                finished_at REAL,               -- wall clock, once done
                task TEXT NOT NULL              -- the task's row: a JSON array (see _sqlite.py)
            )
            """,
            lambda conn: _copy_v1_tasks(conn, "tasks", "tasks_v2"),
            "DROP TABLE tasks",
            "ALTER TABLE tasks_v2 RENAME TO tasks",
            "CREATE INDEX tasks_finished ON tasks (finished_at) WHERE state = 'done'",
            """
            CREATE TABLE changes (
                seq INTEGER PRIMARY KEY,        -- commit order: recovery applies them in it
                ops TEXT NOT NULL               -- what one commit journaled: JSON segments (see _sqlite.py)
            )
            """,
        ),
    ),
    # Nothing in the file changes: a version 2 change log reads as it is.  The
    # number keeps a version 2 trioschedule from mistaking a change log with
    # the fifth kind of group for a corrupt one (it refuses a newer version).
    Migration(
        version=3,
        description="the change log holds the usual outcome compactly (a fifth group in a segment)",
        steps=(),
    ),
    # Likewise: version 3 change logs read as they are.
    Migration(
        version=4,
        description="the change log holds tasks accepted together as one group (a sixth group in a segment)",
        steps=(),
    ),
    Migration(
        version=5,
        description="the schedules table (one JSON record per schedule, docs/SCHEDULES.md)",
        steps=(
            """
            CREATE TABLE schedules (
                name TEXT PRIMARY KEY,
                record TEXT NOT NULL            -- the dispatcher's record: a JSON object (docs/STORE.md)
            )
            """,
        ),
    ),
)


def _copy_v1_tasks(conn: sqlite3.Connection, source: str, target: str) -> None:
    """Version 1 kept a column per field; version 2 keeps the task as one JSON array (encoded here, exactly).

    The array is written out field by field, as version 2 defined it, so that
    this step stays what it was whatever later versions do.
    """
    dumps = json_encoder(check_circular=True)
    rows = conn.execute(
        f"SELECT seq, id, name, args, kwargs, priority, retries, deadline, not_before, state, attempt, failures, "
        f"losses, session, outcome, submitted_at, finished_at FROM {source} ORDER BY seq"
    )
    while batch := rows.fetchmany(1000):
        copied = [
            (seq, task_id, state, finished_at, dumps((
                task_id, name, json.loads(args), json.loads(kwargs), priority, retries, deadline, not_before,
                submitted_at, state, attempt, failures, losses, session,
                None if outcome is None else json.loads(outcome), finished_at,
            )))
            for (seq, task_id, name, args, kwargs, priority, retries, deadline, not_before, state, attempt,
                 failures, losses, session, outcome, submitted_at, finished_at) in batch
        ]  # fmt: skip
        conn.executemany(f"INSERT INTO {target} (seq, id, state, finished_at, task) VALUES (?, ?, ?, ?, ?)", copied)


def check_migrations(migrations: tuple[Migration, ...]) -> int:
    """The latest version; the history must be numbered 1, 2, 3... with no gaps."""
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise RuntimeError(f"MIGRATIONS[{expected - 1}] has version {migration.version}, expected {expected}")
    return len(migrations)


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
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


def is_corruption(exc: sqlite3.Error) -> bool:
    """Whether SQLite's error says the file is damaged (rather than, say, unwritable)."""
    name = getattr(exc, "sqlite_errorname", "")  # Python 3.11+
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return True
    text = str(exc)
    return "not a database" in text or "malformed" in text


def corrupt(path: str, detail: str) -> StoreError:
    """The refusal of a damaged journal, saying what to do about it."""
    return StoreError(
        f"the journal {path} is corrupt ({detail}).  Move it away (with {path}-wal and "
        f"{path}-shm if they exist) and restore it from a backup, or start with an empty journal "
        "and lose its tasks",
        code="corrupt",
    )


def connect(path: str) -> sqlite3.Connection:
    """Open ``path`` (new, or an SQLite file) in autocommit mode; refuses a file that is not SQLite."""
    try:
        with open(path, "rb") as file:
            header = file.read(len(_HEADER))
    except FileNotFoundError:
        header = b""
    if header and header != _HEADER:
        raise corrupt(path, "it is not an SQLite database")
    return sqlite3.connect(path, timeout=5.0, isolation_level=None)


def prepare(conn: sqlite3.Connection, path: str, synchronous: str) -> None:
    """Check that ``conn`` holds a journal this version can use, set it up, and migrate it to the latest version.

    Raises :class:`StoreError` for another program's database, a newer
    format, a damaged file or a filesystem without WAL, before changing
    anything.
    """
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    latest = check_migrations(MIGRATIONS)
    if app_id not in (0, APPLICATION_ID):
        raise StoreError(
            f"{path} is an SQLite database of another program (application_id {app_id:#x}), "
            "not a trioschedule journal; give the dispatcher a path of its own",
            code="not-a-journal",
        )
    if app_id == 0 and (version or conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]):
        raise StoreError(
            f"{path} holds an SQLite database that is not a trioschedule journal; "
            "give the dispatcher a path of its own",
            code="not-a-journal",
        )
    if version > latest:
        raise StoreError(
            f"the journal {path} has format version {version}, written by a newer trioschedule; this one "
            f"reads versions up to {latest}.  Run the newer trioschedule on it (it drains and migrates), "
            "or move the file away to start with an empty journal",
            code="newer-version",
        )
    problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise corrupt(path, "; ".join(problems).replace("\n", "; "))
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise StoreError(
            f"cannot put {path} in WAL mode (it stays {mode!r}); keep the journal on a local filesystem",
            code="unsupported",
        )
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute(f"PRAGMA wal_autocheckpoint = {_WAL_AUTOCHECKPOINT}")
    if version < latest:
        _migrate(conn, path, version)


def _migrate(conn: sqlite3.Connection, path: str, version: int) -> None:
    """Every migration after ``version``, in one transaction that also stamps the file."""
    with transaction(conn):
        pending = [migration for migration in MIGRATIONS if migration.version > version]
        if version == 0:  # a new journal: nothing to migrate, as far as the user is concerned
            _log.info("created the journal %s (format version %d)", path, MIGRATIONS[-1].version)
        else:
            _log.info("migrating the journal %s from format version %d to %d: %s", path, version,
                      MIGRATIONS[-1].version, "; ".join(m.description for m in pending))  # fmt: skip
        for migration in pending:
            for step in migration.steps:
                if isinstance(step, str):
                    conn.execute(step)
                else:
                    step(conn)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {MIGRATIONS[-1].version}")

