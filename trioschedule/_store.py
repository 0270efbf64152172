"""Where a dispatcher journals its tasks.

The dispatcher keeps every live task in memory and tells its store about each
state change.  :class:`MemoryStore` (the Python API's default) forgets
everything; a durable store writes a journal so that a restarted dispatcher
picks up where the old one died.  The contract is in docs/STORE.md.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["MemoryStore", "Store", "StoredTask", "open_store"]


@attrs.define(kw_only=True)
class StoredTask:
    """A task as journaled: everything needed to run it again or to report its outcome."""

    id: str
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    priority: int = 0
    retries: int | None = None
    deadline: float | None = None  # wall-clock (time.time()) deadline
    not_before: float | None = None  # wall-clock time before which it must not run
    state: str = "queued"  # queued | running | done
    attempt: int = 0
    failures: int = 0
    losses: int = 0
    session: str | None = None  # worker session while running
    outcome: dict[str, Any] | None = None  # the Outcome, unstructured, once done
    submitted_at: float = 0.0
    finished_at: float | None = None


class Store:
    """The journal interface.  The base class is the in-memory store: it keeps nothing.

    ``add`` must return only once the tasks are durable; ``update`` may be
    buffered, but the store must keep updates to one task in order, and
    ``flush``/``close`` make everything buffered durable.
    """

    durable = False
    url = "memory:"

    async def open(self) -> list[StoredTask]:
        """Prepare the store and return the tasks to recover (unfinished and retained finished ones)."""
        return []

    async def add(self, tasks: list[StoredTask]) -> None:
        """Journal newly accepted tasks; return once they are durable."""

    def update(self, task: StoredTask) -> None:
        """Journal a task's new state (buffered; group-committed)."""

    def forget(self, task_ids: list[str]) -> None:
        """Drop finished tasks whose retention has passed."""

    async def flush(self) -> None:
        """Make every buffered update durable."""

    async def close(self) -> None:
        """Flush and release the store."""


MemoryStore = Store


def open_store(spec: str | Store | None) -> Store:
    """A store from a URL-ish string (``memory:``, ``sqlite:PATH``), an instance, or None (memory)."""
    if spec is None:
        return MemoryStore()
    if isinstance(spec, Store):
        return spec
    if spec in ("memory", "memory:"):
        return MemoryStore()
    if spec.startswith("sqlite:"):
        from ._sqlite import SQLiteStore

        return SQLiteStore(spec[len("sqlite:") :])
    raise ValueError(f"unknown store {spec!r}: use 'memory:' or 'sqlite:PATH'")
