"""The scheduler's timers: delays, deadlines, session expiry, purging old outcomes."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Any

__all__ = ["Timers"]


class Timers:
    """A heap of ``(when, order, callback, arg)`` on the scheduler's clock.

    Nothing here sleeps: the shell asks :meth:`next_deadline`, sleeps until
    then (or until ``changed`` says an earlier timer was added), and calls
    :meth:`fire_due`.
    """

    __slots__ = ("_heap", "_order", "changed")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[Any], None], Any]] = []
        self._order = 0
        self.changed = False  # a timer became the earliest since the shell last looked

    def at(self, when: float, callback: Callable[[Any], None], arg: Any) -> None:
        self._order += 1
        heapq.heappush(self._heap, (when, self._order, callback, arg))
        if self._heap[0][1] == self._order:
            self.changed = True

    def next_deadline(self) -> float:
        """When the earliest timer is due (``inf`` if none)."""
        return self._heap[0][0] if self._heap else math.inf

    def fire_due(self, now: float) -> bool:
        """Call every callback due at ``now``, earliest first; True if any was."""
        heap = self._heap
        fired = False
        while heap and heap[0][0] <= now:
            _, _, callback, arg = heapq.heappop(heap)
            callback(arg)
            fired = True
        return fired

    def __len__(self) -> int:
        return len(self._heap)
