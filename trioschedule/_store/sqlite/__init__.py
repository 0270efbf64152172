"""A durable store: an SQLite journal in WAL mode, written by one dedicated thread."""

from .store import APPLICATION_ID as APPLICATION_ID
from .store import MIGRATIONS as MIGRATIONS
from .store import Migration as Migration
from .store import SQLiteStore as SQLiteStore
from .store import StoreStatistics as StoreStatistics

__all__ = ["APPLICATION_ID", "MIGRATIONS", "Migration", "SQLiteStore", "StoreStatistics"]
