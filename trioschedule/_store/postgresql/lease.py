"""The leadership lease on PostgreSQL: one row with a term that only grows, and the members' heartbeats.

``trioschedule_lease`` holds exactly one row: ``term`` (0 until first
taken), ``holder``, ``address`` and ``expires_at``.  Times are the
database's (``clock_timestamp()``), so dispatchers' clocks need not agree.

* campaign: in one statement, lock the row ``FOR UPDATE`` if it has expired,
  and give it term + 1, the holder and ``now + ttl``.  Two campaigners race
  on the row lock; the second re-reads the row once the first commits, finds
  it live, and gets nothing.  ``FOR UPDATE`` also waits for the old leader's
  journal transaction in flight (it holds the row ``FOR KEY SHARE``, see
  ``trioschedule_fence``), so once a term is granted nothing of the old
  term's commits later.
* renew and resign: an ``UPDATE`` of ``expires_at`` where the term is still
  the given one; it takes no lock the journal's writes wait for.

Why a connection and a thread of its own: the lease must be renewed on time
however busy or slow the journal is, and psycopg has no Trio support.  Each
call runs in a worker thread (``trio.to_thread``) under a lock, on one
autocommit connection with a short ``statement_timeout``, opened on first use
and again after it broke; a call that cannot reach the database raises
:class:`~trioschedule.StoreError` (``code="io"``) and the caller decides (a
leader that cannot renew within its trust window steps down).
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import trio

from ..._errors import StoreError
from ..base import Leadership, Lease, Member
from . import schema
from .writer import application_name, connect

__all__ = ["PostgreSQLLeadership"]

_CAMPAIGN = (
    "WITH expired AS (SELECT id FROM trioschedule_lease WHERE id = 1 AND expires_at <= clock_timestamp() FOR UPDATE) "
    "UPDATE trioschedule_lease AS l SET term = l.term + 1, holder = %s, address = %s, "
    "expires_at = clock_timestamp() + make_interval(secs => %s) FROM expired WHERE l.id = expired.id RETURNING l.term"
)
_RENEW = (
    "UPDATE trioschedule_lease SET expires_at = clock_timestamp() + make_interval(secs => %s) "
    "WHERE id = 1 AND term = %s RETURNING term"
)
_RESIGN = "UPDATE trioschedule_lease SET expires_at = clock_timestamp() WHERE id = 1 AND term = %s"
_CURRENT = (
    "SELECT term, holder, address, extract(epoch FROM expires_at - clock_timestamp())::float8 "
    "FROM trioschedule_lease WHERE id = 1 AND term > 0"
)
_ANNOUNCE = (
    "INSERT INTO trioschedule_members (holder, address, role, seen_at) VALUES (%s, %s, %s, clock_timestamp()) "
    "ON CONFLICT (holder) DO UPDATE SET address = excluded.address, role = excluded.role, seen_at = excluded.seen_at"
)
_FORGET_MEMBERS = "DELETE FROM trioschedule_members WHERE seen_at < clock_timestamp() - interval '1 day'"
_MEMBERS = (
    "SELECT holder, address, role, extract(epoch FROM clock_timestamp() - seen_at)::float8 "
    "FROM trioschedule_members WHERE seen_at >= clock_timestamp() - make_interval(secs => %s) ORDER BY holder"
)


class PostgreSQLLeadership(Leadership):
    """The lease of a :class:`~.store.PostgreSQLStore`'s database (see the module docstring)."""

    def __init__(self, conninfo: str, *, url: str | None = None, statement_timeout: float = 2.0) -> None:
        self.conninfo = conninfo
        self.url = url or conninfo
        self.statement_timeout = statement_timeout
        self._lock = threading.Lock()  # one call at a time on the connection
        self._conn: psycopg.Connection[Any] | None = None
        self._prepared = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<PostgreSQLLeadership {self.url!r}>"

    # ------------------------------------------------------------ the API
    async def campaign(self, holder: str, address: str, ttl: float) -> int | None:
        _check_ttl(ttl)
        row = await self._call(lambda conn: conn.execute(_CAMPAIGN, (holder, address, float(ttl))).fetchone())
        return None if row is None else int(row[0])

    async def renew(self, term: int, ttl: float) -> bool:
        _check_ttl(ttl)
        row = await self._call(lambda conn: conn.execute(_RENEW, (float(ttl), term)).fetchone())
        return row is not None

    async def resign(self, term: int) -> None:
        await self._call(lambda conn: conn.execute(_RESIGN, (term,)))

    async def current(self) -> Lease | None:
        row = await self._call(lambda conn: conn.execute(_CURRENT).fetchone())
        if row is None:
            return None
        term, holder, address, expires_in = row
        return Lease(term=int(term), holder=holder, address=address, expires_in=float(expires_in))

    async def announce(self, holder: str, address: str, role: str) -> None:
        if role not in ("leader", "standby"):
            raise ValueError(f"role is 'leader' or 'standby', not {role!r}")

        def announce(conn: psycopg.Connection[Any]) -> None:
            conn.execute(_ANNOUNCE, (holder, address, role))
            conn.execute(_FORGET_MEMBERS)

        await self._call(announce)

    async def members(self, within: float) -> list[Member]:
        rows = await self._call(lambda conn: conn.execute(_MEMBERS, (float(within),)).fetchall())
        return [Member(holder=h, address=a, role=r, seen_ago=max(0.0, float(s))) for h, a, r, s in rows]

    async def aclose(self) -> None:
        self._closed = True
        await trio.to_thread.run_sync(self._close)

    # ------------------------------------------------------------ the thread side
    async def _call(self, fn: Any) -> Any:
        if self._closed:
            raise RuntimeError("this PostgreSQLLeadership is closed")
        # A cancelled call is abandoned: its thread finishes (bounded by the timeouts) and the lock
        # makes the next call wait for it.
        return await trio.to_thread.run_sync(self._run, fn, abandon_on_cancel=True)

    def _run(self, fn: Any) -> Any:
        with self._lock:
            conn = self._conn
            try:
                if conn is None or conn.closed:
                    conn = self._conn = self._connect()
                return fn(conn)
            except psycopg.Error as exc:
                if conn is not None and (conn.closed or conn.broken):
                    self._conn = None
                raise StoreError(f"the lease on {self.url} cannot be read or written: {exc}", code="io") from exc

    def _connect(self) -> psycopg.Connection[Any]:
        timeout_ms = max(1, int(self.statement_timeout * 1000))
        conn = connect(self.conninfo, application=application_name() + " (lease)",
                       timeout=self.statement_timeout * 2, autocommit=True)  # fmt: skip
        try:
            conn.execute(f"SET statement_timeout = {timeout_ms}")
            conn.execute(f"SET lock_timeout = {timeout_ms}")
            if not self._prepared:  # the tables may not exist yet: standbys start before anyone opened the store
                schema.prepare(conn, self.url)
                self._prepared = True
        except BaseException:
            conn.close()
            raise
        return conn

    def _close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()


def _check_ttl(ttl: float) -> None:
    if not ttl > 0:
        raise ValueError(f"a lease's ttl is a number of seconds > 0, not {ttl!r}")
