"""The Trio side of a store whose journal one writer thread commits (SQLite, PostgreSQL).

The dispatcher's thread only appends operations to a list the writer thread
takes from (no lock on that path), and parks until the writer says the batch
that holds them is committed.  This class is that side: opening the writer
thread, group-commit tickets (``mark``/``flush``), waking the parked callers,
closing, and turning a writer's failure into :class:`StoreError`.  What a
batch is and how it is written is each store's writer (its other base class),
which provides the shared state named below.  docs/STORE.md has the contract.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import trio

from .._errors import StoreError
from .base import StoredTask

__all__ = ["ThreadedJournal"]

log = logging.getLogger("trioschedule.store")


class ThreadedJournal:
    """Open, wait for commits, and close a journal written by one thread of its own.

    The writer base class sets, in ``_reset_writer()``, what both sides share
    under ``_mutex`` (``_cond`` is a condition on it): ``_ops`` (the buffered
    operations), ``_batch`` (the number of the batch being gathered),
    ``_committed`` (the last batch committed), ``_pending_since``,
    ``_urgent``, ``_closing`` and ``_failure``; and it provides
    ``_open_database()`` (in the thread: returns the tasks to recover),
    ``_open_error(exc)``, ``_write_loop(committed)`` and ``_failed_error()``.
    A subclass names its journal (``_journal_name``, for messages) and
    releases what the thread held in ``_close_connection()``.
    """

    _state: str
    _mutex: threading.Lock
    _cond: threading.Condition
    _ops: list[Any]
    _batch: int
    _committed: int
    _pending_since: float
    _urgent: bool
    _closing: bool
    _failure: BaseException | None

    def _reset_writer(self) -> None:  # pragma: no cover - the writer base class's
        raise NotImplementedError

    def _open_database(self) -> list[StoredTask]:  # pragma: no cover - the writer base class's
        raise NotImplementedError

    def _open_error(self, exc: BaseException) -> StoreError:  # pragma: no cover - the writer base class's
        raise NotImplementedError

    def _write_loop(self, committed: Callable[[], None]) -> None:  # pragma: no cover - the writer base class's
        raise NotImplementedError

    def _failed_error(self) -> StoreError:  # pragma: no cover - each store words its own
        raise NotImplementedError

    def _close_connection(self) -> None:  # pragma: no cover - each store's
        """In the writer thread, as it exits: close the connection and release any lock."""
        raise NotImplementedError

    @property
    def _journal_name(self) -> str:  # pragma: no cover - each store's
        raise NotImplementedError

    def _reset(self) -> None:
        self._reset_writer()  # what the writer thread owns, and what it shares with this side
        # The Trio side's.
        self._lots: dict[int, trio.lowlevel.ParkingLot] = {}  # batch number -> who waits for its commit
        self._opened = trio.Event()
        self._exited = trio.Event()
        self._open_outcome: list[StoredTask] | BaseException = []

    async def _open_thread(self, thread_name: str) -> list[StoredTask]:
        """Start the writer thread and wait until it opened the journal; the tasks to recover."""
        if self._state not in ("new", "closed"):
            raise RuntimeError(f"this {type(self).__name__} is {self._state}; open() it only when new or closed")
        self._reset()
        self._token = trio.lowlevel.current_trio_token()
        self._state = "opening"
        threading.Thread(target=self._run, name=thread_name, daemon=True).start()
        try:
            await self._opened.wait()
        except BaseException:
            self._begin_close()  # the thread finishes opening, then closes by itself
            self._state = "closing"
            raise
        outcome = self._open_outcome
        if isinstance(outcome, BaseException):
            self._state = "closed"
            raise outcome
        self._state = "open"
        self._open_outcome = []
        return outcome

    def _wake_writer(self) -> None:
        """The first operation of a batch was buffered: the writer commits within ``commit_interval``."""
        with self._mutex:
            self._pending_since = time.monotonic()
            self._cond.notify()

    def mark(self) -> int:
        """The batch that holds everything buffered so far (see :meth:`flush`)."""
        with self._mutex:
            return self._batch if self._ops else self._batch - 1  # the one the writer holds, if any

    async def flush(self, mark: int | None = None) -> None:
        """Return once everything buffered before this call is committed; with a :meth:`mark`, what was before it.

        A mark lets a caller wait for its own operations and not for those
        buffered since, which go into the next group commit (one commit later).
        """
        self._check_open("flush")
        with self._mutex:
            self._raise_if_failed()
            ticket = self._batch if self._ops else self._batch - 1
            if mark is not None and mark < ticket:
                ticket = mark
            elif ticket == self._batch:
                self._urgent = True
                self._cond.notify()
        await self._wait_committed(ticket)

    async def close(self) -> None:
        """Commit what is buffered and close the journal.

        Safe to call twice.  If cancelled, the writer thread still finishes
        (and releases what it holds) by itself.  Raises :class:`StoreError`
        if a write failed while the store was open.
        """
        if self._state in ("new", "closed"):
            await trio.lowlevel.checkpoint()
            return
        self._begin_close()
        self._state = "closing"
        await self._exited.wait()
        self._state = "closed"
        if self._failure is not None:
            raise self._failed_error()

    def _check_open(self, what: str) -> None:
        if self._state != "open":
            raise RuntimeError(
                f"{what}() on a {self._state} {type(self).__name__}: call open() first, and not after close()"
            )

    def _begin_close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failed_error()

    async def _wait_committed(self, ticket: int) -> None:
        if self._committed >= ticket:
            await trio.lowlevel.checkpoint()
            return
        while self._committed < ticket:
            if self._failure is not None:
                raise self._failed_error()
            if self._exited.is_set():
                raise StoreError(f"the journal {self._journal_name} was closed before the write was committed")
            lot = self._lots.get(ticket)
            if lot is None:
                lot = self._lots[ticket] = trio.lowlevel.ParkingLot()
            await lot.park()

    def _wake(self) -> None:
        """In the Trio thread, after a commit (or a failure): wake whoever waits for what is committed now."""
        lots = self._lots
        if self._failure is not None:
            ready = list(lots)
        else:
            committed = self._committed
            ready = [ticket for ticket in lots if ticket <= committed]
        for ticket in ready:
            lots.pop(ticket).unpark_all()

    def _thread_exited(self) -> None:
        self._opened.set()
        self._exited.set()
        for lot in self._lots.values():
            lot.unpark_all()
        self._lots.clear()

    def _call_soon(self, fn: Callable[[], None]) -> None:
        """From the writer thread: run ``fn`` in the Trio thread."""
        try:
            self._token.run_sync_soon(fn)
        except trio.RunFinishedError:
            pass  # nobody left to tell

    # ================================================= the writer thread's entry
    def _run(self) -> None:
        """The writer thread: open, then commit until closed; hands each outcome to the Trio side."""
        try:
            try:
                self._open_outcome = self._open_database()
            except BaseException as exc:  # noqa: BLE001 - every failure becomes the open() outcome
                self._open_outcome = exc if isinstance(exc, StoreError) else self._open_error(exc)
                return
            self._call_soon(self._opened.set)
            self._write_loop(lambda: self._call_soon(self._wake))
        except BaseException:  # pragma: no cover - a bug here; never let the thread die silently
            log.exception("the journal writer for %s crashed", self._journal_name)
            with self._cond:
                if self._failure is None:
                    self._failure = RuntimeError("the journal writer thread crashed")
        finally:
            self._close_connection()
            self._call_soon(self._thread_exited)
