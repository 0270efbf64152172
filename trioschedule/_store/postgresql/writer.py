"""The writer thread's half of the PostgreSQL store: it owns the journal's connection and group-commits.

Why a thread: psycopg 3 has no Trio support (psycopg#29: its async API is
asyncio's), and every call blocks on the network and on the server's fsync;
the event loop must never wait for either.  Like the SQLite writer, this
thread takes everything buffered, commits it as *one* row of the change log
``trioschedule_changes`` (:mod:`..changelog`'s format) in one transaction,
sent pipelined (one round trip per commit, not per statement), and starts
over; whatever arrives meanwhile goes into the next commit.  Checkpoints
(:mod:`.checkpoint`) bring ``trioschedule_tasks`` up to date, a slice in the
transaction of a commit, and recovery applies what the change log still
holds before it loads the tasks.

A lost connection is not a failed write: the writer reconnects with backoff
and commits the same batch again (its change-log row has the same number,
inserted unless there already, and checkpoint statements set values, so a
commit whose outcome was unknown is harmless to repeat), for up to
``reconnect_timeout`` seconds; then it stops journaling.  Anything else that
goes wrong stops it at once (fail-stop, as SQLite's).  A fenced store checks
its term first in each transaction and stops with :class:`StoreFenced`
when another dispatcher took the lease.

:class:`JournalWriter` is the base class of :class:`~.store.PostgreSQLStore`;
they share only the fields :meth:`JournalWriter._reset_writer` declares,
under ``_mutex`` unless it says otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

import psycopg
from psycopg import pq

from ..._errors import StoreError, StoreFenced
from ..._json import json_encoder
from .. import changelog
from ..base import StoredTask
from ..changelog import Op
from ..generation import Checkpoints, Generation
from ..threaded import encoded_batch
from . import schema
from .checkpoint import DELETE_CHANGES, PostgreSQLCheckpoints, Statement, net_statements

__all__ = ["JournalWriter", "connect"]

log = logging.getLogger("trioschedule.store")

_LOAD = (
    "SELECT id, name, args, kwargs, priority, retries, deadline, not_before, submitted_at, state, attempt, "
    "failures, losses, session, outcome, finished_at FROM trioschedule_tasks ORDER BY state = 'done', finished_at, seq"
)
_PURGE = "DELETE FROM trioschedule_tasks WHERE state = 'done' AND finished_at < %s"
_LOG = "INSERT INTO trioschedule_changes (seq, ops) VALUES (%s, %s) ON CONFLICT (seq) DO NOTHING"
_PREPARED = b"trioschedule_log"  # _LOG (or, fenced, trioschedule_log()) prepared on the writer's connection
_INT8, _TEXT = 20, 25  # type oids
_SAVE_SCHEDULE = (
    "INSERT INTO trioschedule_schedules (name, record, saved_at) VALUES (%s, %s::jsonb, now()) "
    "ON CONFLICT (name) DO UPDATE SET record = excluded.record, saved_at = excluded.saved_at"
)
_DELETE_SCHEDULE = "DELETE FROM trioschedule_schedules WHERE name = %s"
_LOCK_WAIT = 5.0  # seconds a new session waits for the journal's lock before refusing
_PURGE_EVERY = 60.0  # seconds between the writer's retention sweeps
_BACKOFF = (0.05, 2.0)  # first and longest wait between reconnection attempts
_TRANSIENT = ("08", "57P01", "57P02", "57P03", "53300")  # connection lost, server shut down or starting, too many


def connect(conninfo: str, *, application: str, timeout: float = 10.0, **options: Any) -> psycopg.Connection[Any]:
    """A connection with what the store needs of it: dead peers noticed within seconds on both sides."""
    return psycopg.connect(
        conninfo,
        connect_timeout=max(1, int(timeout)),
        application_name=application[:63],
        # The client notices a server (or a network) that went away; the server notices a
        # client that did (a dead dispatcher's session, and its advisory lock, end within ~25 s).
        keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
        tcp_user_timeout=15000,
        options="-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3",
        **options,
    )  # fmt: skip


def application_name() -> str:
    return f"trioschedule pid {os.getpid()} on {socket.gethostname()}"


def _transient(exc: BaseException, conn: psycopg.Connection[Any] | None) -> bool:
    """True if ``exc`` says the connection (not the statement) failed: reconnect and try again."""
    if conn is not None and (conn.closed or conn.broken):
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(exc, psycopg.OperationalError) and (
        sqlstate is None or sqlstate.startswith(_TRANSIENT[0]) or sqlstate in _TRANSIENT[1:]
    )


class JournalWriter:
    """What the writer thread does: open and recover the journal, then commit batches until closed."""

    # Set by PostgreSQLStore.__init__ (and fence()).
    conninfo: str
    url: str
    retention: float | None
    commit_interval: float
    reconnect_timeout: float
    _term: int | None

    def _reset_writer(self) -> None:
        # Shared with the Trio side, as in the SQLite writer: it appends to ``_ops``
        # (one list.append, no lock) and the writer takes a prefix of it under
        # ``_mutex``; everything else here only under ``_mutex``.
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._ops: list[Op] = []
        self._schedule_ops: list[tuple[str, str | None]] = []  # (name, record text or None: delete), in order
        self._pending_since = 0.0
        self._urgent = False
        self._closing = False
        self._batch = 1
        self._committed = 0
        self._failure: BaseException | None = None
        self._commits = self._rows_written = self._rows_deleted = self._rows_skipped = self._reconnects = 0
        # The writer thread's own.
        self._conn: psycopg.Connection[Any] | None = None
        self._next_purge = 0.0
        self._encode = json_encoder(check_circular=True)
        self._schedules: dict[str, dict[str, Any]] = {}  # by name: read at open, then the Trio side's
        self._taken_schedule_ops: list[tuple[str, str | None]] = []  # taken with the batch being written
        self._seq = 0  # the last change-log row written
        self._unfolded: tuple[list[Op], int] | None = None  # a committed batch not folded yet
        self._prepared: object = None  # the libpq connection _PREPARED is prepared on
        self._checkpoints: Checkpoints[Any] = PostgreSQLCheckpoints(self._encode)

    # ------------------------------------------------------------ opening
    def _connect(self) -> psycopg.Connection[Any]:
        # Autocommit: a batch sends its own BEGIN and COMMIT (see _transaction).
        conn = connect(self.conninfo, application=application_name(), autocommit=True)
        try:
            conn.execute("SET synchronous_commit = on")  # a returned add() is on the server's disk
            # A batch is sent whole (BEGIN to COMMIT), so the server never waits for this client
            # inside a transaction, unless the client froze mid-send (SIGSTOP, a VM pause) while its
            # transaction holds the lease row: then the server ends the session, and the lock with it.
            conn.execute("SET idle_in_transaction_session_timeout = 5000")
            # A batch names its tasks by id: always through the primary key.  The planner's
            # statistics lag behind a table that a busy dispatcher fills and empties (tens of
            # thousands of dead rows before autovacuum comes by, "few rows" in the statistics), and
            # it then scans the whole table for each statement: 190 us of server CPU per task.
            conn.execute("SET enable_seqscan = off")
            # That makes the planner's cost of a whole-table statement (the checkpoint's DELETE of the
            # change log, the retention sweep) high enough to compile it: 80 ms of JIT to delete one row.
            conn.execute("SET jit = off")
            self._take_session_lock(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _take_session_lock(self, conn: psycopg.Connection[Any]) -> None:
        """One dispatcher per database unless they share a lease: exclusive unfenced, shared when fenced."""
        function = "pg_try_advisory_lock" if self._term is None else "pg_try_advisory_lock_shared"
        # A dispatcher that just stopped (or died: its socket closed) may still have a backend
        # on its way out, holding the lock for a moment: wait a little before refusing.
        deadline = time.monotonic() + _LOCK_WAIT
        while True:
            if conn.execute(f"SELECT {function}(%s)", (schema.LOCK_KEY,)).fetchone()[0]:  # type: ignore[index]
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        holders = conn.execute(
            "SELECT a.pid, a.application_name, a.client_addr::text FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.objid = %s "
            "AND a.pid <> pg_backend_pid()",
            (schema.LOCK_KEY & 0xFFFFFFFF,),
        ).fetchall()
        who = "; ".join(f"{app or 'backend ' + str(pid)} from {addr or 'a local socket'}" for pid, app, addr in holders)
        conn.rollback()
        raise StoreError(
            f"the database {self.url} is in use by another dispatcher ({who or 'unknown'}).  Several "
            "dispatchers may share one database only with the lease (docs/HA.md): each then takes it in turn.  "
            "If that dispatcher died with its machine, the server ends its session within about 30 s",
            code="locked",
        )

    def _open_database(self) -> list[StoredTask]:
        """Connect, migrate, recover and sweep: the tasks the journal holds.

        Recovery applies what the change log holds (the commits since the
        last finished checkpoint), in commit order, on top of
        ``trioschedule_tasks``, then sweeps and loads, all in one fenced
        transaction: a dispatcher whose term moved on recovers nothing, and
        one that fails half-way leaves the database as it was.
        """
        conn = self._conn = self._connect()
        schema.prepare(conn, self.url)
        try:
            with conn.transaction():
                conn.execute("SET LOCAL enable_seqscan = on")  # recovery reads whole tables
                self._fence_check(conn)
                rows = conn.execute("SELECT seq, ops FROM trioschedule_changes ORDER BY seq").fetchall()
                if rows:
                    self._replay(conn, rows)
                if self.retention is not None:
                    conn.execute(_PURGE, (time.time() - self.retention,))
                self._schedules = {
                    name: record for name, record in conn.execute("SELECT name, record FROM trioschedule_schedules")
                }
                tasks = [_decode(row) for row in conn.execute(_LOAD)]
        except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
            raise StoreError(
                f"a task in {self.url} does not decode ({exc}); the trioschedule_tasks table was changed by "
                "something else.  Restore a backup, or delete the row to lose that task",
                code="corrupt",
            ) from exc
        if self.retention is not None:
            self._next_purge = time.monotonic() + _PURGE_EVERY
        return tasks

    def _replay(self, conn: psycopg.Connection[Any], rows: list[tuple[int, str]]) -> None:
        """In recovery's transaction: apply these change-log rows on top of the tasks table, then delete them."""
        generation = Generation()
        try:
            for _, text in rows:
                generation.fold(changelog.recovered(text), self._encode)
        except (ValueError, TypeError, IndexError) as exc:  # JSONDecodeError is a ValueError
            raise StoreError(
                f"the change log in {self.url} does not decode ({exc}); trioschedule_changes was changed by "
                "something else.  Restore a backup, or empty that table to lose the changes it holds",
                code="corrupt",
            ) from exc
        for sql, params in net_statements(generation.net(generation.latest, self._encode)):
            conn.execute(sql, params)
        conn.execute(DELETE_CHANGES)
        self._seq = rows[-1][0]  # numbers only grow, whoever wrote the rows before
        log.info("%s: applied %d commit(s) from the change log", self.url, len(rows))

    def _fence_check(self, conn: psycopg.Connection[Any]) -> None:
        if self._term is not None:
            conn.execute("SELECT trioschedule_fence(%s)", (self._term,))

    def _open_error(self, exc: BaseException) -> StoreError:
        if isinstance(exc, psycopg.Error):
            fenced = self._fenced_error(exc)
            if fenced is not None:
                return fenced
        text = str(exc).strip() or repr(exc)
        error = StoreError(f"cannot open the journal {self.url}: {text}", code="io")
        error.__cause__ = exc
        return error

    def _fenced_error(self, exc: psycopg.Error) -> StoreFenced | None:
        diag = exc.diag
        if diag.sqlstate != schema.FENCED_SQLSTATE:
            return None
        detail = diag.message_detail or ""
        current = int(detail) if detail.lstrip("-").isdigit() else None
        return StoreFenced(
            f"this dispatcher lost its lease on {self.url}: it held term {self._term}, and term {current} leads "
            "now; it wrote nothing and must step down",
            term=self._term, current=current,
        )  # fmt: skip

    # ------------------------------------------------------------ committing
    def _write(self, batch: list[Op], schedule_ops: list[tuple[str, str | None]]) -> tuple[int, int, int]:
        """Commit ``batch`` as one change-log row, with a checkpoint slice, the sweep and ``schedule_ops``.

        Returns how many task changes were written, deleted and skipped (not encodable).
        """
        statements: list[Statement] = []
        forgets = changes = skipped = 0
        seq = 0
        if batch:
            batch, text, forgets, changes, skipped = encoded_batch(batch, self._encode)
            if batch:
                seq = self._seq + 1
                statements.append((_LOG, (seq, text)))
        checkpoints = self._checkpoints
        entries, last = checkpoints.slice_for_commit(len(batch))
        checkpoints.apply_slice(statements, entries, last)
        purge = self.retention is not None and time.monotonic() >= self._next_purge
        if purge:
            statements.append((_PURGE, (time.time() - (self.retention or 0.0),)))
        for name, record in schedule_ops:
            statements.append((_DELETE_SCHEDULE, (name,)) if record is None else (_SAVE_SCHEDULE, (name, record)))
        if statements:
            self._commit(statements)
        checkpoints.sliced(last)
        if purge:
            self._next_purge = time.monotonic() + _PURGE_EVERY
        if seq:
            self._seq = seq
            self._unfolded = (batch, seq)  # folded once the waiters are woken (see _write_loop)
        return changes - forgets, forgets, skipped

    def _idle_checkpoint(self, closing: bool) -> bool:
        """Nothing to commit: bring the tasks table up to date (all of it when closing).  True: stop the writer."""
        if self._failure is not None:
            return closing  # stopped: nothing more is written, not even a checkpoint
        statements: list[Statement] = []
        try:
            self._checkpoints.run(statements, everything=closing)
            if statements:
                # Closing: one attempt (the change log keeps everything; the next leader applies it).
                self._commit(statements, retry=not closing)
        except Exception as exc:  # noqa: BLE001 - nothing is lost: the change log still holds it all
            log.warning("checkpoint of the journal %s failed (its change log keeps everything): %r", self.url, exc)
            if closing:
                return True
            with self._cond:
                self._failure = exc  # fenced, or the database refuses: stop writing to it
        return False

    def _commit(self, statements: list[Statement], *, retry: bool = True) -> None:
        """Run ``statements`` in one transaction, reconnecting and retrying while the connection is what fails."""
        lost_since: float | None = None
        delay = _BACKOFF[0]
        while True:
            conn = self._conn
            try:
                if conn is None:
                    conn = self._conn = self._connect()
                    self._reconnects += 1
                    log.warning("reconnected to the journal %s; committing the batch in flight again", self.url)
                self._transaction(conn, statements)
            except psycopg.Error as exc:
                fenced = self._fenced_error(exc)
                if fenced is not None:
                    raise fenced from None
                if not retry or not _transient(exc, conn):
                    raise
                if conn is not None and not conn.closed:
                    conn.close()
                self._conn = None
                now = time.monotonic()
                if lost_since is None:
                    lost_since = now
                    log.warning("the journal %s is unreachable (%s); reconnecting", self.url, str(exc).strip())
                if now - lost_since > self.reconnect_timeout:
                    raise StoreError(
                        f"the journal {self.url} was unreachable for {self.reconnect_timeout:g} s ({exc}); "
                        "journaling stops", code="io",
                    ) from exc  # fmt: skip
                time.sleep(delay)
                delay = min(delay * 2, _BACKOFF[1])
            else:
                return

    def _transaction(self, conn: psycopg.Connection[Any], statements: list[Statement]) -> None:
        """Run ``statements`` in one transaction, pipelined with its BEGIN and COMMIT: one round trip.

        (``conn.transaction()`` in a pipeline syncs after BEGIN and again after
        the statements and the COMMIT: four round trips, each a wake-up of
        the server's backend and of this thread.)  A statement that fails
        makes the server skip the rest, COMMIT included, so the transaction
        is rolled back here.
        """
        if len(statements) == 1 and statements[0][0] is _LOG:
            self._log_only(conn, *statements[0][1])
            return
        try:
            with conn.pipeline(), conn.cursor() as cur:
                cur.execute("BEGIN")
                if self._term is not None:
                    cur.execute("SELECT trioschedule_fence(%s)", (self._term,))
                for sql, params in statements:
                    cur.execute(sql, params)
                cur.execute("COMMIT")
        except BaseException:
            if not conn.closed and not conn.broken:
                try:
                    conn.execute("ROLLBACK")
                except psycopg.Error:
                    pass  # the connection broke meanwhile: the server rolls back on its own
            raise

    def _log_only(self, conn: psycopg.Connection[Any], seq: int, text: str) -> None:
        """Commit a change-log row alone: one prepared statement (the fencing check in it), its own transaction.

        The usual commit.  Sent through libpq directly, which waits for the
        server without holding the GIL: the pipeline's Python machinery cost
        the dispatcher's thread more than the rest of the commit.
        """
        pgconn = conn.pgconn
        if self._prepared is not pgconn:  # once per connection (the schema exists by the first commit)
            if self._term is None:
                sql, types = _LOG.replace("%s", "$1", 1).replace("%s", "$2", 1), [_INT8, _TEXT]
            else:
                sql, types = "SELECT trioschedule_log($1, $2, $3)", [_INT8, _INT8, _TEXT]
            self._check(conn, pgconn.prepare(_PREPARED, sql.encode(), types))
            self._prepared = pgconn
        encoding = conn.info.encoding
        params = [str(seq).encode(), text.encode(encoding)]
        if self._term is not None:
            params.insert(0, str(self._term).encode())
        self._check(conn, pgconn.exec_prepared(_PREPARED, params))

    @staticmethod
    def _check(conn: psycopg.Connection[Any], result: pq.abc.PGresult) -> None:
        if result.status not in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
            raise psycopg.errors.error_from_result(result, encoding=conn.info.encoding)

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if not conn.broken:  # release the lock now, not whenever the server notices the socket closed
                conn.rollback()
                conn.execute("SELECT pg_advisory_unlock_all()")
                conn.commit()
        except psycopg.Error as exc:  # the server is gone: so is the session, and its lock with it
            log.debug("releasing the lock on %s failed: %r", self.url, exc)
        finally:
            conn.close()


def _decode(row: tuple[Any, ...]) -> StoredTask:
    (task_id, name, args, kwargs, priority, retries, deadline, not_before, submitted_at, state, attempt, failures,
     losses, session, outcome, finished_at) = row  # fmt: skip
    return StoredTask(
        id=task_id, name=name, args=json.loads(args), kwargs=json.loads(kwargs), priority=priority, retries=retries,
        deadline=deadline, not_before=not_before, state=state, attempt=attempt, failures=failures, losses=losses,
        session=session, outcome=None if outcome is None else json.loads(outcome), submitted_at=submitted_at,
        finished_at=finished_at,
    )  # fmt: skip
