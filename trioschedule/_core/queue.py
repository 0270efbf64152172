"""The queued tasks of one task name."""

from __future__ import annotations

from collections import deque

from .tasks import QUEUED, Task

__all__ = ["TaskQueue"]


class TaskQueue:
    """Higher priority first, first come first served within one priority.

    A deque per priority level (most workloads use one) instead of a heap:
    O(1) per task.  Tasks that left the queue some other way (cancelled) are
    skipped when they come up, not searched for.
    """

    __slots__ = ("_levels", "_order")

    def __init__(self) -> None:
        self._levels: dict[int, deque[Task]] = {}
        self._order: list[int] = []  # priorities present, highest first

    def _level(self, priority: int) -> deque[Task]:
        level = self._levels.get(priority)
        if level is None:
            level = self._levels[priority] = deque()
            self._order.append(priority)
            self._order.sort(reverse=True)
        return level

    def push(self, task: Task, front: bool = False) -> None:
        level = self._level(task.priority)
        if front:
            level.appendleft(task)
        else:
            level.append(task)

    def extend(self, tasks: list[Task], priority: int) -> None:
        """Queue ``tasks``, all of ``priority``, in order (a ``map()`` chunk)."""
        self._level(priority).extend(tasks)

    def take(self, count: int) -> list[Task]:
        """Up to ``count`` next tasks still queued, in order."""
        taken: list[Task] = []
        while count and self._order:
            priority = self._order[0]
            level = self._levels[priority]
            while count and level:
                task = level.popleft()
                if task.state == QUEUED:
                    taken.append(task)
                    count -= 1
            if not level:
                del self._levels[priority]
                self._order.pop(0)
        return taken

    def head_key(self) -> tuple[int, int]:
        """(-priority, submission order) of the next task: orders names against each other."""
        for priority in self._order:
            for task in self._levels[priority]:
                if task.state == QUEUED:
                    return (-priority, task.seq)
        return (0, 0)

    def __bool__(self) -> bool:
        for level in self._levels.values():
            while level and level[0].state != QUEUED:
                level.popleft()  # left the queue some other way: take() would skip it too
            if level:
                return True
        return False
