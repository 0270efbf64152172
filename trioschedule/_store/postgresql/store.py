"""The PostgreSQL store's Trio side: what the dispatcher calls, from its own thread, without waiting for the network.

As in the SQLite store, it only appends operations (:mod:`.batch`) to a list
that the writer thread (:mod:`.writer`, this class's base) takes from, and
parks until the writer says "committed".  The lease (:mod:`.lease`) has a
connection and a thread of its own.  docs/STORE.md has the contract and this
store's design; docs/HA.md how several dispatchers share one database.
"""

from __future__ import annotations

import re

from ..._errors import StoreError, StoreFenced
from ..._json import json_encoder
from ..base import Store, StoredTask
from ..threaded import ThreadedJournal
from .lease import PostgreSQLLeadership
from .writer import JournalWriter

__all__ = ["PostgreSQLStore"]

def redact(conninfo: str) -> str:
    """The URL without its password, for logs and ``status``."""
    return re.sub(r"^(postgres(?:ql)?://[^:/@]*):[^@]*@", r"\1:***@", conninfo)


class PostgreSQLStore(JournalWriter, ThreadedJournal, Store):
    """A journal in a PostgreSQL database, which several dispatchers may share, one leading (docs/HA.md).

    ``conninfo`` is a libpq URL (``postgresql://USER@HOST:PORT/DB``, with any
    libpq parameter in its query string) or key/value string.  The store
    keeps its tables (``trioschedule_*``) in that database, creating and
    migrating them at :meth:`open`.  ``retention`` (seconds) drops finished
    tasks older than that at open and once a minute; None keeps them until
    :meth:`forget`.  ``commit_interval`` is how long buffered updates may wait
    for company before the writer commits them; :meth:`add` and :meth:`flush`
    never wait for it.  ``reconnect_timeout`` is how long the writer keeps
    reconnecting to a database it lost before it stops journaling.

    Unfenced (no :meth:`fence`), it holds an exclusive advisory lock: one
    dispatcher per database.  Fenced, every write checks the lease's term in
    its own transaction and the lock is shared by the dispatchers that take
    the lease in turn.
    """

    durable = True
    shared = True

    def __init__(
        self,
        conninfo: str,
        *,
        retention: float | None = None,
        commit_interval: float = 0.005,
        reconnect_timeout: float = 300.0,
    ) -> None:
        if not conninfo:
            raise ValueError("PostgreSQLStore needs a connection URL, e.g. 'postgresql://USER@HOST:PORT/DB'")
        if retention is not None and not retention >= 0:
            raise ValueError("retention must be a number of seconds >= 0, or None")
        if not commit_interval >= 0:
            raise ValueError("commit_interval must be >= 0")
        if not reconnect_timeout >= 0:
            raise ValueError("reconnect_timeout must be >= 0")
        self.conninfo = conninfo
        self.url = redact(conninfo)
        self.retention = retention
        self.commit_interval = commit_interval
        self.reconnect_timeout = reconnect_timeout
        self._term = None
        self._state = "new"  # new -> opening -> open -> closing -> closed (-> opening again)
        self._trio_encode = json_encoder(check_circular=True)  # the Trio side's (the writer has its own)
        self._reset()

    def __repr__(self) -> str:
        return f"<PostgreSQLStore {self.url!r} {self._state}>"

    # ============================================================ leadership
    def leadership(self) -> PostgreSQLLeadership:
        """A new lease object on a connection of its own (see :class:`~.lease.PostgreSQLLeadership`)."""
        return PostgreSQLLeadership(self.conninfo, url=self.url)

    def fence(self, term: int) -> None:
        """Every later write transaction first checks that the lease is still at ``term`` (docs/HA.md)."""
        if self._state not in ("new", "closed"):
            raise RuntimeError("fence() the store before open(): a running writer keeps the term it started with")
        if isinstance(term, bool) or not isinstance(term, int) or term < 1:
            raise ValueError(f"a lease term is an int >= 1, not {term!r}")
        self._term = term

    @property
    def term(self) -> int | None:
        """The term this store is fenced at (None: not fenced)."""
        return self._term

    # ============================================================ Trio side
    async def open(self) -> list[StoredTask]:
        """Connect, create or migrate the tables, and return the tasks to recover.

        Raises :class:`StoreError` if the database cannot be reached, was
        written by a newer trioschedule, is used by another dispatcher without
        a lease (``locked``), or (:class:`StoreFenced`) the lease moved on.
        """
        return await self._open_thread(f"trioschedule-postgresql:{self.url}")

    # ------------------------------------------------------------ failures
    def _failed_error(self) -> StoreError:
        failure = self._failure
        if isinstance(failure, StoreFenced):
            return StoreFenced(str(failure), term=failure.term, current=failure.current)
        error = StoreError(
            f"writing the journal {self.url} failed ({failure!r}), so this dispatcher stopped journaling; "
            "changes since the last successful commit are lost.  Fix the cause and restart: the database "
            "holds every commit made before the failure",
            code="io",
        )
        error.__cause__ = failure
        return error

    @property
    def _journal_name(self) -> str:
        return self.url
