"""The journal as the scheduling core sees it: one seam, no I/O.

The core reports every state change of a task here, synchronously; what
"journal" means (nothing, an SQLite change log, a shared database) is the
adapter's business.  The dispatcher's adapter over a :class:`~trioschedule.Store`
is ``trioschedule._dispatcher.journal.StoreJournal``; the property tests use
a recording one.  Making a change durable, and holding frames back until it
is, happens outside the core (the adapter's write barrier).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .tasks import Task

__all__ = ["Journal"]


class Journal(Protocol):
    """What the scheduler tells the journal; called only while ``active``."""

    #: True while a durable store is open: the scheduler reports changes only then.
    active: bool
    #: True if first attempts handed to one worker together may go as one :meth:`started_first`.
    bulk_starts: bool

    def changed(self, task: Task) -> None:
        """``task`` changed state (or was accepted before the journal opened): record it as it is now."""

    def started_first(self, task_ids: list[str], session_id: str) -> None:
        """These tasks, journaled as queued and never run before, were handed to ``session_id``."""

    def forget(self, task_ids: list[str]) -> None:
        """These finished tasks' outcomes are no longer kept."""
