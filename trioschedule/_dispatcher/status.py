"""The status document: what ``status()``, ``trioschedule status`` and ``status --json`` show."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from .._core.tasks import DELAYED, QUEUED, RUNNING
from .._protocol import messages as m

if TYPE_CHECKING:
    from .dispatcher import Dispatcher

__all__ = ["status_document", "tasks_listing"]

#: Ids listed per task name that no connected worker offers (so they can be cancelled by id).
WAITING_IDS_SHOWN = 10
#: Failed (not ``ok``) outcomes in the status document, newest first.
RECENT_FAILURES_SHOWN = 20
#: The most entries one ``tasks`` request gets, whatever limit it asks for.
TASKS_LIMIT = 1000


def status_document(dispatcher: Dispatcher) -> dict[str, Any]:
    """A JSON-ready snapshot of ``dispatcher``: counts, workers, clients.

    It reads what the scheduling core already counts, so asking costs the
    hot path nothing.
    """
    d = dispatcher
    core = d._core
    queued, delayed, waiting = core.queued_counts()
    counts = core.counts
    document = {
        "name": d.name,
        "pid": os.getpid(),
        "address": f"{d.host}:{d.port}",
        "protocol": m.PROTOCOL_VERSION,
        "started_at": d._started_at,
        "uptime": time.time() - d._started_at if d._started_at else 0.0,
        "draining": core.draining,
        "store": d.store.url,
        "tasks": {
            "queued": queued,
            "delayed": delayed,
            "running": core.running,
            "done": counts[m.OK],
            "failed": counts[m.ERROR],
            "cancelled": counts[m.CANCELLED],
            "timeout": counts[m.TIMEOUT],
            "lost": counts[m.LOST],
        },
        "waiting_for_worker": waiting,
        "waiting_ids": _waiting_ids(core, waiting),
        "workers": [
            {**s.peer.describe(), "session": s.id, "connected": s.conn is not None, "draining": s.draining}
            for s in core.sessions.values()
        ],
        "clients": [c.peer.describe() for c in d._connections.clients.values()],
        "hook_errors": d._hooks.errors,
        "recent_failures": [e.describe() for e in core.history.latest(RECENT_FAILURES_SHOWN, failed=True)],
        "schedules": d.schedules(),
    }
    election = d._election
    if election is not None:  # a shared store: who leads, its term, the standbys alive (docs/HA.md)
        document["ha"] = election.describe()
    return document


def tasks_listing(dispatcher: Dispatcher, request: m.TasksRequest) -> m.TasksReply:
    """What ``trioschedule tasks`` shows: recent outcomes from the history, or the unfinished tasks.

    The unfinished are found by walking the task table (an admin request,
    rare); the outcomes are read from the core's bounded history.
    """
    core = dispatcher._core
    limit = max(0, min(request.limit, TASKS_LIMIT))
    if not request.unfinished:
        entries = [e.describe() for e in core.history.latest(limit, failed=request.failed)]
        return m.TasksReply(tasks=tuple(entries), history=core.history.size)
    found: list[dict[str, Any]] = []
    offered = core.placement.offered()
    for task in reversed(core.tasks.values()):  # newest first
        if len(found) >= limit:
            break
        if task.state in (QUEUED, DELAYED, RUNNING):
            found.append({
                "id": task.id,
                "name": task.name,
                "state": task.state,
                "waiting_for_worker": task.state == QUEUED and task.name not in offered,
                "worker": task.worker if task.state == RUNNING else None,
                "attempt": task.attempt,
                "submitted_at": task.submitted_at,
            })  # fmt: skip
    return m.TasksReply(tasks=tuple(found), history=core.history.size)


def _waiting_ids(core: Any, waiting: dict[str, int]) -> dict[str, list[str]]:
    """The first few ids of the queued tasks that wait for a name no connected worker offers."""
    ids: dict[str, list[str]] = {}
    if waiting:
        for task in core.tasks.values():
            if task.state == QUEUED and task.name in waiting:
                shown = ids.setdefault(task.name, [])
                if len(shown) < WAITING_IDS_SHOWN:
                    shown.append(task.id)
    return ids
