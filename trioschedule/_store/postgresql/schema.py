"""The PostgreSQL store's tables, their history as migrations, and migrating a database forward.

Every table is named ``trioschedule_*``, so the store can share a database
with an application's own tables.  ``trioschedule_schema_version`` holds one
row per migration applied (its version, description and time); the
database's version is the largest.  :func:`prepare` refuses a database
written by a newer trioschedule before changing anything, and applies the
missing migrations in **one** transaction under an advisory lock, so two
dispatchers starting at once migrate it once and a migration that fails
leaves it as it was.

Everything here runs on the writer thread (or in a test).
"""

from __future__ import annotations

import logging
from typing import Any

import attrs

from ..._errors import StoreError

__all__ = ["FENCED_SQLSTATE", "LOCK_KEY", "MIGRATE_KEY", "MIGRATIONS", "Migration", "latest_version", "prepare", "version_of"]

_log = logging.getLogger("trioschedule.store")

#: The advisory lock a dispatcher holds for its journal's session ("trio"): exclusively without a
#: lease, shared with one (see the writer).
LOCK_KEY = 0x7472696F
#: The advisory lock a migration holds for its transaction (another key: a standby prepares the
#: schema while the leader holds the first one).
MIGRATE_KEY = LOCK_KEY + 1
#: The SQLSTATE ``trioschedule_fence()`` raises when the lease moved on to another term.
FENCED_SQLSTATE = "TSF01"


@attrs.frozen(kw_only=True)
class Migration:
    """One step of the schema's history: it turns version ``version - 1`` into ``version``."""

    version: int
    description: str
    steps: tuple[str, ...]


# The schema as a history.  A database at version v gets every step after v,
# in one transaction; one newer than the last step is refused.  To change the
# schema, append a Migration (never edit a released one) and update the
# statements that name columns (.batch, .writer, .lease).
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="create the tasks table",
        steps=(
            """
            CREATE TABLE trioschedule_tasks (
                id text COLLATE "C" PRIMARY KEY,          -- bytewise: no locale rules in the hot index
                seq bigint GENERATED ALWAYS AS IDENTITY,  -- submission order: recovery requeues in it
                name text NOT NULL,
                args text NOT NULL,             -- JSON array, as encoded (text keeps it exactly; jsonb would not)
                kwargs text NOT NULL,           -- JSON object, key order kept
                priority bigint NOT NULL,
                retries bigint,
                deadline double precision,      -- wall clock (time.time())
                not_before double precision,    -- wall clock
                submitted_at double precision NOT NULL,
                state text NOT NULL CHECK (state IN ('queued', 'running', 'done')),
                attempt bigint NOT NULL,
                failures bigint NOT NULL,
                losses bigint NOT NULL,
                session text,
                outcome text,                   -- JSON object, once done
                finished_at double precision
            ) WITH (fillfactor = 70)
            """,
            # No index but the primary key, and room in each page: a task's start and end
            # then update its row in place (HOT), without touching an index.  The retention
            # sweep (once a minute at most) and recovery read the whole table anyway.
        ),
    ),
    Migration(
        version=2,
        description="the leadership lease, the members, and the fencing check",
        steps=(
            # Logged, not UNLOGGED as River's: the term is the fencing token and must
            # never go back, not even after the database crashed and truncated unlogged tables.
            """
            CREATE TABLE trioschedule_lease (
                id integer PRIMARY KEY CHECK (id = 1),
                term bigint NOT NULL,
                holder text NOT NULL,
                address text NOT NULL,
                expires_at timestamptz NOT NULL
            )
            """,
            "INSERT INTO trioschedule_lease VALUES (1, 0, '', '', '-infinity')",
            """
            CREATE TABLE trioschedule_members (
                holder text PRIMARY KEY,
                address text NOT NULL,
                role text NOT NULL,
                seen_at timestamptz NOT NULL
            )
            """,
            # Every write transaction of a fenced store starts with this.  FOR KEY SHARE
            # conflicts with the campaign's FOR UPDATE (a new term waits for the old
            # leader's transaction in flight, and the old leader's next one waits for
            # the campaign, then sees the new term), not with a renewal's UPDATE of
            # expires_at: a busy journal never delays the leader's renewals.
            f"""
            CREATE FUNCTION trioschedule_fence(expected bigint) RETURNS void LANGUAGE plpgsql AS $$
            DECLARE
                found bigint;
            BEGIN
                SELECT term INTO found FROM trioschedule_lease WHERE id = 1 FOR KEY SHARE;
                IF found IS DISTINCT FROM expected THEN
                    RAISE EXCEPTION 'trioschedule: the lease is at term %, not %: this dispatcher was fenced off',
                        found, expected USING ERRCODE = '{FENCED_SQLSTATE}', DETAIL = coalesce(found::text, '');
                END IF;
            END
            $$
            """,
        ),
    ),
    Migration(
        version=3,
        description="create the schedules table",
        steps=(
            """
            CREATE TABLE trioschedule_schedules (
                name text PRIMARY KEY,
                record jsonb NOT NULL,
                saved_at timestamptz NOT NULL DEFAULT now()
            )
            """,
        ),
    ),
    Migration(
        version=4,
        description="the change log: one row per group commit, folded into the tasks table by checkpoints",
        steps=(
            # ops: the commit's operations in the change log's format (trioschedule/_store/changelog.py,
            # the SQLite journal's since its format 4), text as encoded.  Written by the writer, which
            # numbers its commits (seq), and emptied by checkpoints and recovery (docs/STORE.md).
            """
            CREATE TABLE trioschedule_changes (
                seq bigint PRIMARY KEY,
                ops text NOT NULL
            )
            """,
            # A commit's row is kilobytes of JSON, read back only by a recovery: stored out of line
            # without compression, which would cost the server more CPU per commit than the write.
            "ALTER TABLE trioschedule_changes ALTER COLUMN ops SET STORAGE EXTERNAL",
            # A commit that is only its change-log row (the usual one) is this one call: the fencing
            # check and the insert in one statement, its own transaction, one round trip.
            """
            CREATE FUNCTION trioschedule_log(expected bigint, commit_seq bigint, commit_ops text)
            RETURNS void LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM trioschedule_fence(expected);
                INSERT INTO trioschedule_changes (seq, ops) VALUES (commit_seq, commit_ops) ON CONFLICT (seq) DO NOTHING;
            END
            $$
            """,
        ),
    ),
)


def latest_version() -> int:
    return MIGRATIONS[-1].version


def version_of(conn: Any) -> int:
    """The database's schema version: 0 if it has no trioschedule tables yet."""
    row = conn.execute("SELECT to_regclass('trioschedule_schema_version') IS NOT NULL").fetchone()
    if not row[0]:
        return 0
    return int(conn.execute("SELECT coalesce(max(version), 0) FROM trioschedule_schema_version").fetchone()[0])


def prepare(conn: Any, url: str, *, upto: int | None = None) -> int:
    """Create or migrate the schema (to ``upto``, default the latest); return the version found.

    ``conn`` is a psycopg connection not in a transaction.  Refuses (StoreError
    ``newer-version``) a database a newer trioschedule wrote, changing nothing.
    """
    target = latest_version() if upto is None else upto
    # Already there: no lock.  The migration lock is the key a running dispatcher holds for its
    # session (shared while it leads), so a dispatcher taking over from a leader that is paused, not
    # dead, would wait for it for as long as the old one's session lives.
    found = version_of(conn)
    if not conn.autocommit:
        conn.commit()  # the read's own transaction; the migration below takes a fresh one
    if found == target:
        return found
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS trioschedule_schema_version ("
            " version integer PRIMARY KEY, description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        found = version_of(conn)
        if found > latest_version():
            raise StoreError(
                f"the database {url} has trioschedule schema version {found}, written by a newer trioschedule; "
                f"this one reads versions up to {latest_version()}.  Run the newer trioschedule on it, or give "
                "this dispatcher another database",
                code="newer-version",
            )
        for migration in MIGRATIONS:
            if found < migration.version <= target:
                for step in migration.steps:
                    conn.execute(step)
                conn.execute(
                    "INSERT INTO trioschedule_schema_version (version, description) VALUES (%s, %s)",
                    (migration.version, migration.description),
                )
        if found < target:
            _log.info("%s: migrated the schema from version %d to %d", url, found, target)
    return found
