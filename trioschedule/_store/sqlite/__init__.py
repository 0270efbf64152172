"""A durable store: an SQLite journal in WAL mode, written by one dedicated thread.

* :mod:`.store`: :class:`SQLiteStore`, the Trio side (what the dispatcher calls);
* :mod:`.writer`: the writer thread, which owns the connection (group commit);
* :mod:`.checkpoint`: bringing the ``tasks`` table up to date from the change log
  (the format is :mod:`..changelog`, the generations :mod:`..generation`: shared with PostgreSQL);
* :mod:`.schema`: recognising a journal, :data:`MIGRATIONS`, migrating;
* :mod:`.lockfile`: one dispatcher per journal.

docs/STORE.md explains the design and the contract every store keeps.
"""

from .schema import APPLICATION_ID as APPLICATION_ID
from .schema import MIGRATIONS as MIGRATIONS
from .schema import Migration as Migration
from .store import SQLiteStore as SQLiteStore
from .store import StoreStatistics as StoreStatistics

__all__ = ["APPLICATION_ID", "MIGRATIONS", "Migration", "SQLiteStore", "StoreStatistics"]
