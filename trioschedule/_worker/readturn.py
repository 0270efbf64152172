"""The read turn: which task reads a worker's connection, its reader or one of its runners.

A runner that reads runs what arrives in the same pass of the scheduler,
where the reader would have had to wake it for the next pass.  The runner
takes a task's first step by hand (:func:`resume` goes on from there), so a
task that never waits ends without the runner giving up the turn.
"""

from __future__ import annotations

import types
from typing import Any

import trio

from .._net.connection import Connection

__all__ = ["UNCLAIMED", "ReadTurn", "resume"]

UNCLAIMED = object()  # ReadTurn.runner: handed to the runners, not yet taken by one


class ReadTurn:
    """Which task reads one connection: its reader task, or, while the worker is idle, one of the runners.

    Exactly one task reads at a time; the reader hands the turn to an idle
    runner that asked for it, and the runner hands it back as soon as a task
    it runs waits for anything, or when reading fails (the reader then raises
    that error).
    """

    __slots__ = ("conn", "error", "goodbye", "reader_lot", "reader_scope", "runner", "shared", "wanted")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        # Handing the turn over cancels the reader's read; trio's SSLStream may
        # not survive that (a cancelled read during a renegotiation breaks it),
        # so over TLS the reader keeps the turn.
        self.shared = not isinstance(conn.stream, trio.SSLStream)
        self.runner: object | None = None  # None: the reader reads; else the runner that does (or UNCLAIMED)
        self.wanted = False  # an idle runner asked for the turn
        self.reader_lot = trio.lowlevel.ParkingLot()  # the reader waits here while a runner reads
        self.reader_scope: trio.CancelScope | None = None  # around the reader's read (cancelled to hand over)
        self.error: BaseException | None = None  # reading failed in a runner: the reader raises it
        self.goodbye = False  # a runner read the dispatcher's Goodbye

    def give_back(self, error: BaseException | None = None, goodbye: bool = False) -> None:
        self.runner = None
        self.error = error
        self.goodbye = goodbye
        self.reader_lot.unpark()


@types.coroutine
def resume(coro: Any, trap: Any) -> Any:
    """Go on with a coroutine whose first step was taken by hand: what ``await coro`` would have done."""
    while True:
        try:
            sent = yield trap
        except BaseException as exc:  # noqa: BLE001 - thrown into the coroutine, as await would
            try:
                trap = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                trap = coro.send(sent)
            except StopIteration as stop:
                return stop.value
