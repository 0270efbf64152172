"""The PostgreSQL store: a journal several dispatchers share, one leading at a time (docs/STORE.md, docs/HA.md).

``store.py`` is the Trio side, ``writer.py`` the writer thread that owns the
journal's connection and group-commits, ``batch.py`` turns a batch of
operations into a few set-based statements, ``schema.py`` holds the tables'
history as migrations, ``lease.py`` the leadership lease on a connection of
its own.  Needs psycopg 3 (``pip install 'trioschedule[postgresql]'``).
"""

from .lease import PostgreSQLLeadership as PostgreSQLLeadership
from .store import PostgreSQLStore as PostgreSQLStore

__all__ = ["PostgreSQLLeadership", "PostgreSQLStore"]
