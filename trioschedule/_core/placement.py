"""Which worker runs what: the queues by task name, least loaded first, and work stealing."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator

from .queue import TaskQueue
from .sessions import WorkerSession
from .tasks import QUEUED, Task

__all__ = ["Placement"]


class Placement:
    """The queued tasks of every name and the connected sessions that offer each name.

    It decides; :class:`~trioschedule._core.scheduler.Scheduler` records the
    decisions (``assign``), so that every state change stays in one place.
    """

    __slots__ = ("by_name", "queues", "ready")

    def __init__(self) -> None:
        self.queues: dict[str, TaskQueue] = {}
        self.ready: set[str] = set()  # names that may have queued tasks
        self.by_name: dict[str, set[WorkerSession]] = {}

    # ------------------------------------------------------------ queues
    def _queue(self, name: str) -> TaskQueue:
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = TaskQueue()
        return queue

    def enqueue(self, task: Task, *, front: bool = False) -> None:
        task.state = QUEUED
        self._queue(task.name).push(task, front)
        self.ready.add(task.name)

    def extend(self, name: str, tasks: list[Task], priority: int) -> None:
        """Queue a ``map()`` chunk, all of one name and priority, in order."""
        self._queue(name).extend(tasks, priority)
        self.ready.add(name)

    def has_queued(self, name: str) -> bool:
        queue = self.queues.get(name)
        return queue is not None and bool(queue)

    # ---------------------------------------------------------- sessions
    def offer(self, session: WorkerSession) -> None:
        for name in session.names:
            self.by_name.setdefault(name, set()).add(session)

    def withdraw(self, session: WorkerSession) -> None:
        for name in session.names:
            group = self.by_name.get(name)
            if group is not None:
                group.discard(session)

    def offered(self) -> set[str]:
        """The names some connected worker offers."""
        return {name for name, group in self.by_name.items() if any(s.conn is not None for s in group)}

    def unoffered(self) -> list[str]:
        """Names with queued tasks that no connected worker offers (they wait until one connects)."""
        offered = self.offered()
        return sorted(name for name, queue in self.queues.items() if name not in offered and queue)

    def capacity(self, name: str) -> int:
        """How many tasks the connected workers offering ``name`` may hold at once."""
        return sum(session.window for session in self.by_name.get(name, ()) if session.conn is not None)

    def least_loaded(self, name: str) -> WorkerSession | None:
        """The connected session offering ``name`` with the most room, if it has any."""
        best: WorkerSession | None = None
        best_load = 1.0
        for session in self.by_name.get(name, ()):
            if session.conn is not None and not session.draining:
                load = len(session.assigned) / session.window
                if load < best_load:
                    best, best_load = session, load
        return best

    # --------------------------------------------------------- decisions
    def dispatch(self, assign: Callable[[list[Task], WorkerSession], None]) -> None:
        """Give queued tasks to sessions that offer them and have room, least loaded first.

        Names are served in the order of their next task (priority, then
        submission); within a name, each session gets tasks up to where it
        would be more loaded than the next least loaded one.
        """
        ready = self.ready
        order = sorted(ready, key=lambda n: self.queues[n].head_key()) if len(ready) > 1 else list(ready)
        for name in order:
            queue = self.queues[name]
            candidates = [
                (len(s.assigned) / s.window, i, s)
                for i, s in enumerate(self.by_name.get(name, ()))
                if s.conn is not None and not s.draining and len(s.assigned) < s.window
            ]
            if candidates:
                heapq.heapify(candidates)
                while candidates:
                    _, i, session = heapq.heappop(candidates)
                    room = session.window - len(session.assigned)
                    if candidates:
                        level = candidates[0][0] - len(session.assigned) / session.window
                        room = min(room, max(1, math.ceil(level * session.window)))
                    tasks = queue.take(room)
                    if tasks:
                        assign(tasks, session)
                    if len(tasks) < room:
                        break  # the queue is empty
                    if len(session.assigned) < session.window:
                        heapq.heappush(candidates, (len(session.assigned) / session.window, i, session))
            if not queue:
                ready.discard(name)

    def steal_for(self, hungry: WorkerSession) -> tuple[WorkerSession, list[Task]] | None:
        """Work stealing: prefetched tasks another session should hand back for ``hungry``'s idle runners.

        Prefetching keeps fast workers busy, but a long task would otherwise
        hold the tasks queued behind it on its worker while another worker
        sits idle (Celery's complaint).  The session with the most unstarted
        tasks hands back as many as the idle one can start now, the newest
        first (they would have waited longest).
        """
        idle = hungry.peer.concurrency - len(hungry.assigned)
        names = hungry.names
        if any(self.queues.get(name) for name in names):
            return None  # plain dispatching will feed it
        best: list[Task] = []
        donor: WorkerSession | None = None
        for session in self._sessions_offering(names):
            if session is hungry or session.conn is None or len(session.assigned) <= session.peer.concurrency:
                continue
            spare = [t for t in session.assigned.values() if not t.started and not t.reclaiming and t.name in names]
            if len(spare) > len(best):
                best, donor = spare, session
        if donor is None or not best:
            return None
        return donor, best[-idle:]

    def _sessions_offering(self, names: frozenset[str]) -> Iterator[WorkerSession]:
        for name in names:
            yield from self.by_name.get(name, ())
