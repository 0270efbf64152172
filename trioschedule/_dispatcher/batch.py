"""The tasks of one ``map()``: their outcomes in order."""

from __future__ import annotations

from typing import Any

import trio

from .._core.tasks import Task
from .._handles import values_of
from .._protocol import messages as m

__all__ = ["Batch"]


class Batch:
    """The tasks of one ``map()``: their outcomes in order, one object for the whole batch.

    A task hands its outcome to its place here as it ends (``_finish``), and
    the dispatcher forgets it, so a finished task's record is freed at once.
    Tasks arrive a chunk at a time and earlier chunks may finish before later
    ones are added, so only once ``results()`` says every chunk is in does the
    count reaching zero mean the batch is done.
    """

    __slots__ = ("_complete", "_done", "_drained", "_drained_at", "outcomes", "unfinished")

    def __init__(self) -> None:
        self.outcomes: list[m.Outcome | None] = []
        self.unfinished = 0
        self._done = trio.Event()
        self._complete = False  # every chunk added
        self._drained: trio.Event | None = None  # for wait_unfinished()
        self._drained_at = -1

    def add(self, tasks: list[Task]) -> None:
        base = len(self.outcomes)
        for i, task in enumerate(tasks):
            task.batch = self
            task.batch_index = base + i
        self.outcomes += [None] * len(tasks)
        self.unfinished += len(tasks)

    def one_done(self, index: int, outcome: m.Outcome) -> None:  # called by Scheduler.finish
        self.outcomes[index] = outcome
        self.unfinished -= 1
        if self.unfinished == self._drained_at:
            self._drained.set()  # type: ignore[union-attr]
        if not self.unfinished and self._complete:
            self._done.set()

    async def wait_unfinished(self, count: int) -> None:
        """Wait until at most ``count`` tasks added so far are unfinished."""
        if self.unfinished > count:
            self._drained, self._drained_at = trio.Event(), count
            try:
                await self._drained.wait()
            finally:
                self._drained, self._drained_at = None, -1

    async def results(self, return_exceptions: bool) -> list[Any]:
        """Once every chunk is added: wait for the last task to end, then the values in order."""
        self._complete = True
        if self.unfinished:
            await self._done.wait()
        return values_of(self.outcomes, return_exceptions)  # type: ignore[arg-type]
